//! Shared helpers of the integration tests: where the repository and its tools are.

use std::path::PathBuf;

/// The repository root (the folder holding the workspace `Cargo.toml`).
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// A tool installed by `scripts/install-tools` (node tools under `tools/node_modules/.bin`).
pub fn node_tool(name: &str) -> PathBuf {
    repo_root().join("tools/node_modules/.bin").join(name)
}
