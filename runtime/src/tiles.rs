//! How a SIMD kernel walks a strip's rows in tiles.

/// Runs `$body` with `$m0` the first row of each tile of a strip of
/// `$rows` rows and `$r` (a `const`) its height: whole tiles of `$mr` rows,
/// then one tile of the rows left, each height listed in `[..]` (every
/// one from 1 to `$mr - 1`): a kernel of its own count, so no work is
/// wasted on the edge.
macro_rules! row_tiles {
    ($rows:expr, $mr:expr, |$m0:ident, $r:ident| $body:expr, [$($edge:literal)*]) => {{
        let rows: usize = $rows;
        let mut $m0 = 0;
        while $m0 + $mr <= rows {
            {
                const $r: usize = $mr;
                $body;
            }
            $m0 += $mr;
        }
        match rows - $m0 {
            0 => {}
            $($edge => {
                const $r: usize = $edge;
                $body;
            })*
            _ => unreachable!("an edge tile height is missing"),
        }
    }};
}

pub(crate) use row_tiles;
