//! Regional configuration packages: a `.deb` that drops one validated TOML fragment into
//! `/etc/edge-coupon/conf.d/`, where both daemons pick it up without a restart (the
//! sync daemon through its config watcher). Built with `dpkg-deb`.

use anyhow::{bail, Context};
use std::path::{Path, PathBuf};
use std::process::Command;

/// Where the fragment is installed.
pub fn target_path(region: &str) -> String {
    format!("/etc/edge-coupon/conf.d/50-region-{region}.toml")
}

fn valid_region(r: &str) -> bool {
    !r.is_empty()
        && r.len() <= 40
        && r.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && r.starts_with(|c: char| c.is_ascii_alphanumeric())
}

fn valid_version(v: &str) -> bool {
    v.starts_with(|c: char| c.is_ascii_digit())
        && v.chars()
            .all(|c| c.is_ascii_alphanumeric() || ".+~-".contains(c))
}

/// A package built, and the keys of secrets it carries (a warning for regional IT).
pub struct Built {
    pub deb: PathBuf,
    pub secrets: Vec<String>,
}

/// Validates `file` and builds the package in `output`. One that carries secrets is made
/// readable by its owner only (the file is copied around before it reaches a store).
pub fn build(region: &str, version: &str, file: &Path, output: &Path) -> anyhow::Result<Built> {
    if !valid_region(region) {
        bail!("--region `{region}`: use lower-case letters, digits and '-' (e.g. midwest-2)");
    }
    if !valid_version(version) {
        bail!("--version `{version}` is not a Debian version (e.g. 1.0 or 2026.11.22-1)");
    }
    let text =
        std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?;
    shared::config::Config::check_fragment(&text)
        .map_err(|e| anyhow::anyhow!("{} is refused, no package built: {e}", file.display()))?;
    let secrets = shared::config::Config::secret_keys(&text);
    let name = format!("edge-coupon-config-{region}");
    // A fresh directory only this user may enter, removed when done (a fixed name under
    // /tmp could be made beforehand by someone else, with links in it).
    let stage = tempfile::Builder::new()
        .prefix("edge-ctl-package-")
        .tempdir()
        .context("cannot make a staging directory")?;
    let root = stage.path().join("root");
    let conf_d = root.join("etc/edge-coupon/conf.d");
    let debian = root.join("DEBIAN");
    std::fs::create_dir_all(&conf_d)?;
    std::fs::create_dir_all(&debian)?;
    let target = target_path(region);
    let installed = root.join(target.trim_start_matches('/'));
    std::fs::write(&installed, &text)?;
    set_mode(&installed, 0o640)?;
    let size_kib = text.len().div_ceil(1024).max(1);
    std::fs::write(
        debian.join("control"),
        format!(
            "Package: {name}\nVersion: {version}\nArchitecture: all\nMaintainer: {MAINTAINER}\n\
             Depends: edge-coupon\nSection: net\nPriority: optional\nInstalled-Size: {size_kib}\n\
             Description: edge-coupon configuration for region {region}\n \
             Installs {target},\n \
             merged over /etc/edge-coupon/edge-coupon.toml by edge-server and\n \
             sync-daemon, which apply it without a restart. The file was checked\n \
             with their own validator when the package was built.\n"
        ),
    )?;
    std::fs::write(debian.join("conffiles"), format!("{target}\n"))?;
    // Debian policy: a copyright file and a changelog in the package's doc directory.
    let doc = root.join("usr/share/doc").join(&name);
    std::fs::create_dir_all(&doc)?;
    std::fs::write(
        doc.join("copyright"),
        format!(
            "Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/\n\
             Upstream-Name: {name}\n\nFiles: *\nCopyright: {year} Regional IT\nLicense: MIT\n",
            year = chrono::Utc::now().format("%Y")
        ),
    )?;
    let changelog = format!(
        "{name} ({version}) stable; urgency=medium\n\n  * Regional configuration {version} for {region}.\n\n -- {MAINTAINER}  {}\n",
        chrono::Utc::now().format("%a, %d %b %Y %H:%M:%S +0000")
    );
    gzip_to(&changelog, &doc.join("changelog.gz"))?;
    // Readable by the services' group only: it may hold credentials.
    let postinst = debian.join("postinst");
    std::fs::write(
        &postinst,
        format!(
            "#!/bin/sh\nset -e\nif [ \"$1\" = configure ] && getent group edge-coupon >/dev/null; then\n  \
             chown root:edge-coupon {target}\n  chmod 0640 {target}\nfi\nexit 0\n"
        ),
    )?;
    set_mode(&postinst, 0o755)?;
    std::fs::create_dir_all(output)?;
    let deb = output.join(format!("{name}_{version}_all.deb"));
    let status = Command::new("dpkg-deb")
        .args(["--root-owner-group", "--build"])
        .arg(&root)
        .arg(&deb)
        .output()
        .context("cannot run dpkg-deb (install the dpkg package)")?;
    drop(stage);
    if !status.status.success() {
        bail!(
            "dpkg-deb failed: {}",
            String::from_utf8_lossy(&status.stderr).trim()
        );
    }
    if !secrets.is_empty() {
        set_mode(&deb, 0o600)?;
    }
    Ok(Built { deb, secrets })
}

/// Who the regional package says it is from (Debian wants a real-looking address).
const MAINTAINER: &str = "Regional IT <regional-it@edge-coupon.invalid>";

/// `gzip -9n` (what Debian tools use for changelogs).
fn gzip_to(text: &str, path: &Path) -> anyhow::Result<()> {
    use std::io::Write;
    let mut child = Command::new("gzip")
        .args(["-9n", "-c"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .context("cannot run gzip")?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(text.as_bytes())?;
    }
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!("gzip failed");
    }
    std::fs::write(path, out.stdout)?;
    Ok(())
}

fn set_mode(p: &Path, mode: u32) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked() {
        assert!(valid_region("midwest-2"));
        assert!(!valid_region("Mid West"));
        assert!(!valid_region("../x"));
        assert!(valid_version("1.0"));
        assert!(valid_version("2026.11.22-1"));
        assert!(!valid_version("v1"));
    }
}
