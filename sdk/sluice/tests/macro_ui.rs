//! Compile tests of `#[sluice::transform]`, `#[sluice::source]` and `#[sluice::sink]` (trybuild):
//! every form the attributes accept compiles and runs; every mistake fails with the error in `ui/*.stderr`, pointing at the offending tokens.
//! `TRYBUILD=overwrite cargo test -p sluice --test macro_ui` regenerates the expected errors after a
//! deliberate change (read the diff: the spans are what users see).

#[test]
fn the_attributes_accept_their_forms_and_refuse_mistakes_with_spanned_errors() {
    let cases = trybuild::TestCases::new();
    cases.pass("tests/ui/pass_*.rs");
    cases.compile_fail("tests/ui/fail_*.rs");
}
