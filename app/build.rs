// Records the git commit for spdk_get_version ("pcache v0.1.0 git sha1 <commit>").
fn main() {
    let sha = std::process::Command::new("git")
        .args(["rev-parse", "--short=10", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=PCACHE_GIT_SHA={sha}");
    println!("cargo:rerun-if-changed=../.git/HEAD");
    // A new commit on the current branch rewrites a file here, not HEAD.
    println!("cargo:rerun-if-changed=../.git/refs/heads");
}
