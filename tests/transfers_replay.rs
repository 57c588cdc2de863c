//! Replays recorded histories of the transfer workflow (tests/fixtures/transfers/*.json, recorded
//! from the real Temporal dev server by tests/transfers.rs with `TRANSFERS_RECORD_HISTORIES=1`)
//! against the current workflow code: a change that makes the workflow take another path on an
//! existing history (a nondeterminism) fails here, before it reaches running transfers.

#[tokio::test]
async fn recorded_histories_replay_on_the_current_workflow() {
    let dir = fintech_tests::repo_root().join("tests/fixtures/transfers");
    let mut names: Vec<_> = std::fs::read_dir(&dir)
        .expect("fixture dir")
        .map(|entry| entry.expect("entry").path())
        .filter(|path| path.extension().is_some_and(|extension| extension == "json"))
        .collect();
    names.sort();
    assert!(names.len() >= 3, "recorded histories in {}: {names:?}", dir.display());
    for path in names {
        let json = std::fs::read(&path).expect("fixture");
        fintech_tests::transfers::replay_json(&json).await;
    }
}
