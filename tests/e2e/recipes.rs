//! The README's grpcurl recipes, run as written against the real binary: every
//! `sh` block of the "grpcurl recipes" section in order, in one shell (so the
//! keys a block creates serve the next ones), and every `# =>` line of a block
//! must appear in that block's output.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::process::*;

struct Recipe {
    script: String,
    expected: Vec<String>,
}

fn recipes(readme: &str) -> Vec<Recipe> {
    let start = readme
        .find("\n## grpcurl recipes\n")
        .expect("README has a \"grpcurl recipes\" section");
    let section = &readme[start + 1..];
    let end = section[3..].find("\n## ").map_or(section.len(), |i| i + 3);
    let mut recipes = Vec::new();
    let mut lines = section[..end].lines();
    while let Some(line) = lines.next() {
        if line.trim() != "```sh" {
            continue;
        }
        let mut script = String::new();
        let mut expected = Vec::new();
        for line in lines.by_ref() {
            if line.trim() == "```" {
                break;
            }
            if let Some(want) = line.strip_prefix("# => ") {
                expected.push(want.to_owned());
            }
            script.push_str(line);
            script.push('\n');
        }
        recipes.push(Recipe { script, expected });
    }
    recipes
}

fn grpcurl_dir() -> PathBuf {
    let grpcurl = std::env::var("GRPCURL")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(std::env::var("HOME").unwrap_or_default()).join("go/bin/grpcurl"));
    assert!(
        grpcurl.exists(),
        "{} is missing: tests/setup.sh installs grpcurl",
        grpcurl.display()
    );
    grpcurl.parent().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readme_grpcurl_recipes_work_as_written() {
    let readme = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md")).unwrap();
    let recipes = recipes(&readme);
    assert!(recipes.len() >= 10, "found only {} recipe blocks", recipes.len());

    let dir = tempfile::tempdir().unwrap();
    let tally = Tally::start(&dir.path().join("data")).await;
    let outputs = dir.path().join("out");
    std::fs::create_dir(&outputs).unwrap();
    // One shell for all blocks; each block's output goes to its own file.
    let mut script = String::from("set -euo pipefail\n");
    for (i, recipe) in recipes.iter().enumerate() {
        script.push_str(&format!("exec >{}/{i} 2>&1\n", outputs.display()));
        script.push_str(&recipe.script);
    }
    let path = format!(
        "{}:{}",
        grpcurl_dir().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let status = tokio::task::spawn_blocking({
        let tally_addr = tally.addr.clone();
        move || {
            Command::new("bash")
                .arg("-c")
                .arg(script)
                .env("PATH", path)
                .env("TALLY", tally_addr)
                .env("TALLY_ADMIN_KEY", ADMIN_KEY)
                .status()
                .unwrap()
        }
    })
    .await
    .unwrap();
    let output = |i: usize| std::fs::read_to_string(outputs.join(i.to_string())).unwrap_or_default();
    if !status.success() {
        let failed = (0..recipes.len())
            .rev()
            .find(|i| outputs.join(i.to_string()).exists())
            .unwrap_or(0);
        panic!(
            "recipe {failed} failed ({status}):\n{}\n--- output:\n{}",
            recipes[failed].script,
            output(failed)
        );
    }
    for (i, recipe) in recipes.iter().enumerate() {
        let out = output(i);
        for want in &recipe.expected {
            assert!(
                out.contains(want.as_str()),
                "recipe {i} should print {want:?}:\n{}\n--- output:\n{out}",
                recipe.script
            );
        }
    }
}
