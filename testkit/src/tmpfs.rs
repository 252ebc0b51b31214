//! A small tmpfs mounted on a fresh temporary directory: a file system a test can fill.
//! Needs root (or CAP_SYS_ADMIN); unmounted on drop, also while a test panics.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use tempfile::TempDir;

use crate::process::run_within;

/// How long `mount`/`umount` may take.
const MOUNT_LIMIT: Duration = Duration::from_secs(20);

/// A mounted tmpfs; [`path`](Self::path) is its root.
pub struct Tmpfs {
    // Unmounted in `drop`, before the directory itself is removed with this field.
    dir: TempDir,
    mounted: bool,
}

impl Tmpfs {
    /// Mounts a tmpfs of `size` (as `mount -o size=` reads it: `1m`, `64k`) on a new
    /// temporary directory. The error says why when the mount is refused (not root, no
    /// CAP_SYS_ADMIN, no `mount` binary).
    pub fn mount(size: &str) -> Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("dr-tmpfs-")
            .tempdir()
            .context("creating the mount point")?;
        mount(&[
            "-t",
            "tmpfs",
            "-o",
            &format!("size={size},mode=0755"),
            "dr-testkit-tmpfs",
            &dir.path().display().to_string(),
        ])?;
        Ok(Self { dir, mounted: true })
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Grows (or shrinks) the mounted file system to `size`, keeping its files.
    pub fn resize(&self, size: &str) -> Result<()> {
        mount(&[
            "-o",
            &format!("remount,size={size}"),
            &self.path().display().to_string(),
        ])
    }

    /// Unmounts now (lazily if something still holds a file open). Idempotent.
    pub fn unmount(&mut self) -> Result<()> {
        if !self.mounted {
            return Ok(());
        }
        let target = self.path().display().to_string();
        let out = run_within(Command::new("umount").arg(&target), MOUNT_LIMIT)?;
        if !out.status.success() {
            let lazy = run_within(Command::new("umount").args(["-l", &target]), MOUNT_LIMIT)?;
            if !lazy.status.success() {
                bail!(
                    "umount {target}: {}",
                    String::from_utf8_lossy(&lazy.stderr).trim()
                );
            }
        }
        self.mounted = false;
        Ok(())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        if let Err(err) = self.unmount() {
            eprintln!("dr-testkit: {err:#}");
        }
    }
}

fn mount(args: &[&str]) -> Result<()> {
    let out = run_within(Command::new("mount").args(args), MOUNT_LIMIT)
        .context("running mount (util-linux)")?;
    if !out.status.success() {
        bail!(
            "mount {} failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}
