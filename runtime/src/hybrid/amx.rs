//! The x86-64 AMX kernel: 16 x 16 tiles of i32 sums from `tdpbssd`, for
//! the whole 16-row groups of a strip when K is at least 64; the rest of the
//! strip (its last rows, or all of it at smaller K) goes to the AVX-512 VNNI
//! kernel, and the epilogue is that kernel's.
//!
//! `tdpbssd` multiplies a tile of 16 rows x 64 signed bytes of activations
//! by one of 16 rows x 64 signed bytes of weights, each weight row one
//! packed group (16 channels x 4 inputs): the panels the code generator
//! bakes already are its operand, read in place. Its i32 sums of signed
//! products are exact (each product at most 128 x 127, no 16-bit step), so
//! mixed-sign rows need no offset. A 32 x 32 block is four sum tiles (two
//! row tiles of activations, two panels); its inputs past the last whole
//! 64 (K mod 64) go through zero-padded copies, so every tile has one shape
//! and the tile configuration is loaded once per call of the driver.
//!
//! Linux gives a process the AMX tile state only when asked
//! (`arch_prctl(ARCH_REQ_XCOMP_PERM)`); [`available`] asks once.

use super::{Strip, avx512};
use qbake_format::{KG, NR};
use std::arch::asm;
use std::arch::x86_64::*;
use std::marker::PhantomData;
use std::mem::MaybeUninit;
use std::sync::OnceLock;

/// Rows of an activation tile, and sum-tile rows.
pub(super) const TILE_ROWS: usize = 16;
/// Bytes of a tile row: 16 groups of 4 inputs.
const TILE_BYTES: usize = 64;
/// Packed groups a tile covers.
const TILE_GROUPS: usize = TILE_BYTES / KG;

/// Whether this CPU has AMX-INT8 and the OS lets this process use it
/// (asked once, then remembered).
pub fn available() -> bool {
    static AVAILABLE: OnceLock<bool> = OnceLock::new();
    *AVAILABLE.get_or_init(|| cpu_has_amx_int8() && os_grants_tiles())
}

fn cpu_has_amx_int8() -> bool {
    // CPUID leaf 7: EDX bit 24 is AMX-TILE, bit 25 AMX-INT8. (Rust's
    // feature detection for them is not stable.)
    let leaf7 = std::arch::x86_64::__cpuid_count(7, 0);
    leaf7.edx & (0b11 << 24) == 0b11 << 24
}

#[cfg(target_os = "linux")]
fn os_grants_tiles() -> bool {
    const ARCH_REQ_XCOMP_PERM: libc::c_long = 0x1023;
    const XFEATURE_XTILEDATA: libc::c_long = 18;
    // SAFETY: arch_prctl with these arguments only changes this process's
    // permissions; it fails cleanly on kernels or VMs without AMX.
    unsafe { libc::syscall(libc::SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) == 0 }
}

#[cfg(not(target_os = "linux"))]
fn os_grants_tiles() -> bool {
    false
}

/// The tile configuration (palette 1): tiles 0-7 of 16 rows of 64 bytes.
#[repr(C, align(64))]
struct TileConfig {
    palette: u8,
    start_row: u8,
    reserved: [u8; 14],
    bytes_per_row: [u16; 16],
    rows: [u8; 16],
}

const CONFIG: TileConfig = TileConfig {
    palette: 1,
    start_row: 0,
    reserved: [0; 14],
    bytes_per_row: [64, 64, 64, 64, 64, 64, 64, 64, 0, 0, 0, 0, 0, 0, 0, 0],
    rows: [16, 16, 16, 16, 16, 16, 16, 16, 0, 0, 0, 0, 0, 0, 0, 0],
};

/// How many of a strip's `rows` (the first ones) [`strip`] multiplies on
/// tiles, at `groups` packed groups of inputs; the rest go to VNNI.
pub(super) fn rows_on_tiles(rows: usize, groups: usize) -> usize {
    if groups >= TILE_GROUPS {
        rows / TILE_ROWS * TILE_ROWS
    } else {
        0
    }
}

/// The strip: its whole 16-row groups on tiles when K is at least 64, the
/// rest on the VNNI kernel.
///
/// # Safety
/// AVX-512F, BW and VNNI; `s` passed `Strip::check`, with the unsigned
/// copy of its rows given if any has a negative value (for the VNNI part);
/// `tiles` serves only strips of this product.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
pub(super) unsafe fn strip(s: &mut Strip<'_>, tiles: &mut Tiles) {
    let whole = rows_on_tiles(s.rows, s.groups);
    if whole == 0 {
        // SAFETY: the caller's.
        return unsafe { avx512::strip(s) };
    }
    let two = s.cols > NR;
    let c = s.c.as_mut_ptr();
    // Each panel's groups past the last whole 16 into the zero-padded tile.
    let (chunks, tail_groups) = (s.groups / TILE_GROUPS, s.groups % TILE_GROUPS);
    if tail_groups > 0 {
        for (h, groups) in tiles
            .b
            .0
            .chunks_exact_mut(TILE_GROUPS)
            .enumerate()
            .take(1 + usize::from(two))
        {
            let offset = h * s.panel_stride + chunks * TILE_GROUPS * NR * KG;
            for (g, row) in groups[..tail_groups].iter_mut().enumerate() {
                row.copy_from_slice(&s.panel[offset + g * NR * KG..][..NR * KG]);
            }
        }
    }
    let mut sums = MaybeUninit::<Sums>::uninit();
    let mut m0 = 0;
    // SAFETY: as the caller's; each block covers rows m0..m0 + 16 or 32 <=
    // whole <= s.rows, and its epilogue reads the sums its products stored.
    // (Issuing a block's products before the previous block's epilogue,
    // with two sets of sums, was tried: no faster.)
    unsafe {
        while m0 < whole {
            let rows = if m0 + 2 * TILE_ROWS <= whole {
                2 * TILE_ROWS
            } else {
                TILE_ROWS
            };
            if rows == 2 * TILE_ROWS {
                products::<2>(s, m0, two, tiles, sums.as_mut_ptr());
            } else {
                products::<1>(s, m0, two, tiles, sums.as_mut_ptr());
            }
            finish_block(s, m0, rows, two, sums.assume_init_ref(), c);
            m0 += rows;
        }
        if whole < s.rows {
            avx512::strip(&mut s.skip_rows(whole));
        }
    }
}

/// This thread's tiles for one product, from [`Tiles::configure`] to drop.
///
/// Configuring loads the tile configuration (`ldtilecfg`, about 160 ns:
/// once per driver call, not per strip); dropping returns the tiles to
/// their initial state (`tilerelease`). Not `Send`: the configuration
/// belongs to the thread that loaded it.
///
/// It also holds the inputs past the last whole 64 of K, zero-padded to a
/// tile so that every tile has one shape: the rows' bytes (`a`, by each
/// block) and each panel's groups (`b`, by each strip). Zeroed once per
/// product: its strips all write the same bytes of them, so the padding
/// stays zero (zeroing these 4 KB per strip had cost 1-2% of a forward).
pub(super) struct Tiles {
    a: Aligned<[[i8; TILE_BYTES]; 2 * TILE_ROWS]>,
    b: Aligned<[[u8; TILE_BYTES]; 2 * TILE_GROUPS]>,
    _this_thread: PhantomData<*const ()>,
}

impl Tiles {
    /// Loads the tile configuration on this thread.
    ///
    /// # Safety
    /// [`available`] must have returned true.
    pub(super) unsafe fn configure() -> Self {
        // SAFETY: the caller checked AMX; CONFIG is a valid palette-1 configuration.
        unsafe { asm!("ldtilecfg [{}]", in(reg) &CONFIG, options(nostack, readonly)) };
        Tiles {
            a: Aligned([[0; TILE_BYTES]; 2 * TILE_ROWS]),
            b: Aligned([[0; TILE_BYTES]; 2 * TILE_GROUPS]),
            _this_thread: PhantomData,
        }
    }
}

impl Drop for Tiles {
    fn drop(&mut self) {
        // SAFETY: a `Tiles` exists only where `configure` ran, on this
        // thread, so AMX is available.
        unsafe { asm!("tilerelease", options(nostack, nomem)) };
    }
}

/// The i32 sums of a block: 32 rows of two panels' 16 channels.
type Sums = Aligned<[[i32; 2 * NR]; 2 * TILE_ROWS]>;

/// Rows `m..m + rows` of the strip from their `sums`: the VNNI kernel's
/// epilogue.
///
/// # Safety
/// As [`strip`], with `m + rows <= s.rows` and `c` `s.c`'s start.
#[target_feature(enable = "avx512f")]
unsafe fn finish_block(s: &Strip<'_>, m: usize, rows: usize, two: bool, sums: &Sums, c: *mut f32) {
    let masks = avx512::column_masks(s);
    let consts = [&s.params[0], &s.params[usize::from(two)]].map(|p| avx512::PanelConsts::new(p, s.act));
    // SAFETY: the caller's; `finish` writes the strip's columns of row m + r.
    unsafe {
        let c = c.add(m * s.ldc);
        for (r, sums) in sums.0[..rows].iter().enumerate() {
            for h in 0..1 + usize::from(two) {
                let acc = _mm512_loadu_si512(sums[h * NR..].as_ptr().cast());
                avx512::finish(s, m + r, acc, &consts[h], c.add(r * s.ldc + h * NR), masks[h]);
            }
        }
    }
}

/// The sums of rows `m0..m0 + 16 * T` of the strip against its one or two
/// (`two`) panels, on tiles, stored to `out` (rows past `16 * T` are zeros).
///
/// # Safety
/// As [`strip`], with `m0 + 16 * T <= s.rows`, `s.groups >= 16`, and the
/// weights' tail filled for this strip.
#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn products<const T: usize>(s: &Strip<'_>, m0: usize, two: bool, tiles: &mut Tiles, out: *mut Sums) {
    let chunks = s.groups / TILE_GROUPS;
    let tail_groups = s.groups - chunks * TILE_GROUPS;
    let panels = [
        s.panel.as_ptr(),
        s.panel[if two { s.panel_stride } else { 0 }..].as_ptr(),
    ];
    if tail_groups > 0 {
        let (from, to) = (chunks * TILE_BYTES, s.groups * KG);
        // One masked load a row (a call to memcpy for fewer than 64 bytes
        // cost more than the copy); its masked-off bytes stay zero.
        let mask: __mmask64 = (1u64 << (to - from)) - 1;
        for (r, row) in tiles.a.0[..T * TILE_ROWS].iter_mut().enumerate() {
            let src = &s.a[(m0 + r) * s.lda..][from..to];
            // SAFETY: the mask reads `to - from` bytes of `src` and
            // writes as many of `row` (64 bytes).
            unsafe {
                _mm512_mask_storeu_epi8(
                    row.as_mut_ptr(),
                    mask,
                    _mm512_maskz_loadu_epi8(mask, src.as_ptr()),
                )
            };
        }
    }
    // SAFETY: every tile load reads 16 rows of 64 bytes: of `a` at rows
    // m0..m0 + 16 T (within the strip) and bytes below `chunks * 64 <=
    // groups * 4`; of a panel, groups below `chunks * 16 <= groups`; or of
    // the tail copies. The stores write the four 16 x 16 sum tiles within
    // `out`. Tiles 0-3 are the sums, 4-5 the activations, 6-7 the weights.
    unsafe {
        let lda = s.lda;
        let a = s.a.as_ptr().add(m0 * lda);
        asm!(
            "tilezero tmm0",
            "tilezero tmm1",
            "tilezero tmm2",
            "tilezero tmm3",
            options(nostack, nomem)
        );
        let step = |a0: *const i8, a1: *const i8, a_stride: usize, b0: *const u8, b1: *const u8| {
            asm!(
                "tileloadd tmm4, [{a0} + {sa}*1]",
                "tileloadd tmm6, [{b0} + {sb}*1]",
                "tdpbssd tmm0, tmm4, tmm6",
                a0 = in(reg) a0, b0 = in(reg) b0, sa = in(reg) a_stride, sb = in(reg) NR * KG,
                options(nostack, readonly),
            );
            if two {
                asm!(
                    "tileloadd tmm7, [{b1} + {sb}*1]",
                    "tdpbssd tmm1, tmm4, tmm7",
                    b1 = in(reg) b1, sb = in(reg) NR * KG,
                    options(nostack, readonly),
                );
            }
            if T == 2 {
                asm!(
                    "tileloadd tmm5, [{a1} + {sa}*1]",
                    "tdpbssd tmm2, tmm5, tmm6",
                    a1 = in(reg) a1, sa = in(reg) a_stride,
                    options(nostack, readonly),
                );
                if two {
                    asm!("tdpbssd tmm3, tmm5, tmm7", options(nostack, nomem));
                }
            }
        };
        for k in 0..chunks {
            let b = k * TILE_GROUPS * NR * KG;
            step(
                a.add(k * TILE_BYTES),
                a.add(TILE_ROWS * lda + k * TILE_BYTES),
                lda,
                panels[0].add(b),
                panels[1].add(b),
            );
        }
        if tail_groups > 0 {
            let (a_tail, b_tail) = (tiles.a.0.as_ptr().cast::<i8>(), tiles.b.0.as_ptr().cast::<u8>());
            step(
                a_tail,
                a_tail.add(TILE_ROWS * TILE_BYTES),
                TILE_BYTES,
                b_tail,
                b_tail.add(TILE_GROUPS * TILE_BYTES),
            );
        }
        let out = out.cast::<u8>();
        let row_bytes = 2 * NR * 4;
        asm!(
            "tilestored [{p} + {s}*1], tmm0",
            "tilestored [{q} + {s}*1], tmm1",
            "tilestored [{r} + {s}*1], tmm2",
            "tilestored [{t} + {s}*1], tmm3",
            p = in(reg) out,
            q = in(reg) out.add(NR * 4),
            r = in(reg) out.add(TILE_ROWS * row_bytes),
            t = in(reg) out.add(TILE_ROWS * row_bytes + NR * 4),
            s = in(reg) row_bytes,
            options(nostack),
        );
    }
}

#[repr(C, align(64))]
struct Aligned<T>(T);
