//! Configuration of the unit-test property tests (issue 13: a deterministic test suite), the
//! twin of `tests/common/mod.rs`: a fixed RNG seed per `proptest!` block (overridable with
//! `PROPTEST_RNG_SEED` / `PROPTEST_CASES` to hunt with other cases) and failures persisted in
//! `proptest-regressions/` (replayed first on every later run; commit the file).

use proptest::test_runner::{Config, FileFailurePersistence, RngSeed};

/// `cases` cases from the fixed `seed`, failures persisted in `file` (relative to the package
/// root, where `cargo test` runs).
pub fn proptest_config(cases: u32, seed: u64, file: &'static str) -> Config {
    let env = Config::default(); // reads the PROPTEST_* environment variables
    Config {
        cases: if std::env::var_os("PROPTEST_CASES").is_some() {
            env.cases
        } else {
            cases
        },
        rng_seed: match env.rng_seed {
            RngSeed::Random => RngSeed::Fixed(seed),
            fixed => fixed,
        },
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct(file))),
        ..env
    }
}
