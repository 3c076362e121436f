//! Compile errors, pinned at the macro's argument, and expansions that must
//! build and run. Regenerate the messages with `TRYBUILD=overwrite`.

#[test]
fn ui() {
    let t = trybuild::TestCases::new();
    t.compile_fail("ui/fail/*.rs");
    t.pass("ui/pass/*.rs");
}
