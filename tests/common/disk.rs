//! A small file system for one test: a data directory that can be filled
//! up and freed again, to act out a full disk.

use std::io::Write;
use std::path::PathBuf;

/// A size-limited filesystem (tmpfs) mounted at `at` for one test, lazily
/// unmounted when dropped (also when the test fails).
pub struct SmallDisk(PathBuf);

impl SmallDisk {
    /// Mounts a tmpfs of `size` (`24m`, …) at `at`, 0700, creating `at`.
    pub fn mount(at: PathBuf, size: &str) -> SmallDisk {
        std::fs::create_dir_all(&at).expect("mount point");
        nix::mount::mount(
            Some("tmpfs"),
            &at,
            Some("tmpfs"),
            nix::mount::MsFlags::MS_NOSUID | nix::mount::MsFlags::MS_NODEV,
            Some(format!("size={size},mode=0700").as_str()),
        )
        .expect("mount tmpfs");
        SmallDisk(at)
    }

    /// Fills the filesystem with `filler` until it is full.
    pub fn fill(&self) -> PathBuf {
        let path = self.0.join("filler");
        let mut f = std::fs::File::create(&path).expect("filler");
        let chunk = vec![0xAAu8; 64 * 1024];
        while f.write_all(&chunk).is_ok() {}
        let byte = [0xAAu8];
        while f.write_all(&byte).is_ok() {}
        path
    }

    /// Frees what [`SmallDisk::fill`] took.
    pub fn free(&self) {
        std::fs::remove_file(self.0.join("filler")).expect("free space");
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(&self.0, nix::mount::MntFlags::MNT_DETACH);
    }
}
