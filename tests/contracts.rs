//! The contracts: the generated descriptor set holds every service, and `buf breaking` against
//! the released baseline catches a breaking edit (a renumbered or removed field) while letting an
//! unchanged copy through.

use std::path::Path;
use std::process::{Command, Output};

use fintech_tests::{node_tool, repo_root};
use prost::Message;

fn latest_baseline() -> std::path::PathBuf {
    let mut releases: Vec<_> = std::fs::read_dir(repo_root().join("contracts/releases"))
        .expect("contracts/releases exists")
        .map(|entry| entry.expect("readable entry").path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "binpb"))
        .collect();
    releases.sort();
    releases.pop().expect("at least one released baseline")
}

/// Copies the Buf module to a scratch folder, applies `edit` to `Order`'s file, and runs
/// `buf breaking` there against the released baseline.
fn buf_breaking_after(edit: impl Fn(&str) -> String) -> Output {
    let scratch = tempfile::tempdir().expect("temp dir");
    copy_dir(&repo_root().join("proto"), &scratch.path().join("proto"));
    // buf.yaml's second module: the googleapis files scripts/install-tools copies from PyPI.
    copy_dir(&repo_root().join(".tools/proto"), &scratch.path().join(".tools/proto"));
    std::fs::copy(repo_root().join("buf.yaml"), scratch.path().join("buf.yaml")).expect("copy buf.yaml");
    let payments = scratch.path().join("proto/fintech/payments/v1/payments.proto");
    let source = std::fs::read_to_string(&payments).expect("read payments.proto");
    std::fs::write(&payments, edit(&source)).expect("write payments.proto");
    Command::new(node_tool("buf"))
        .arg("breaking")
        .arg("proto")
        .arg("--against")
        .arg(latest_baseline())
        .current_dir(scratch.path())
        .output()
        .expect("buf runs (scripts/install-tools installs it)")
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("create dir");
    for entry in std::fs::read_dir(from).expect("read dir") {
        let path = entry.expect("entry").path();
        let target = to.join(path.file_name().expect("file name"));
        if path.is_dir() {
            copy_dir(&path, &target);
        } else {
            std::fs::copy(&path, &target).expect("copy file");
        }
    }
}

fn report(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

#[test]
fn unchanged_contracts_pass_buf_breaking() {
    let output = buf_breaking_after(|source| source.to_owned());
    assert!(output.status.success(), "unchanged copy must pass: {}", report(&output));
}

#[test]
fn renumbered_order_field_fails_buf_breaking() {
    let output = buf_breaking_after(|source| {
        let edited = source.replacen("string customer_id = 2;", "string customer_id = 20;", 1);
        assert_ne!(edited, source, "the edit must apply");
        edited
    });
    let text = report(&output);
    assert!(
        !output.status.success(),
        "a renumbered field must fail buf breaking: {text}"
    );
    assert!(text.contains("Order"), "the failure names the message: {text}");
}

#[test]
fn removed_order_field_fails_buf_breaking() {
    let output = buf_breaking_after(|source| {
        let edited = source.replacen("  string product_type = 6;\n", "", 1);
        assert_ne!(edited, source, "the edit must apply");
        edited
    });
    let text = report(&output);
    assert!(
        !output.status.success(),
        "a removed field must fail buf breaking: {text}"
    );
    assert!(
        text.contains("product_type") || text.contains("\"6\""),
        "the failure names the field: {text}"
    );
}

#[test]
fn descriptor_set_holds_every_service_for_reflection() {
    let set = prost_types::FileDescriptorSet::decode(fintech_proto::FILE_DESCRIPTOR_SET)
        .expect("the embedded descriptor set decodes");
    let services: Vec<String> = set
        .file
        .iter()
        .flat_map(|file| {
            file.service
                .iter()
                .map(move |service| format!("{}.{}", file.package(), service.name()))
        })
        .collect();
    for expected in ["fintech.payments.v1.PaymentsService", "fintech.tax.v1.TaxService"] {
        assert!(
            services.iter().any(|service| service == expected),
            "{expected} missing from {services:?}"
        );
    }
}
