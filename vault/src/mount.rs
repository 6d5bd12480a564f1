//! Delivering a task's files into a directory (moby's `setupSecretDir`,
//! Kubernetes' atomic writer): on a tmpfs only, never on a disk-backed
//! filesystem, and published with a `..data` symlink swap so that a
//! reader sees either the whole old set or the whole new one.
//!
//! The layout of a mounted directory:
//! - `..<generation>/`: one complete set of files, written before it is
//!   published, each with its owner and mode;
//! - `..data`: a symlink to the current generation, replaced by a rename;
//! - `<target>`: a symlink to `..data/<target>` for each file.
//!
//! Targets never start with `..` ([`crate::tasks::validate_target`]), so
//! they never meet the directory's own names. The previous generation is
//! kept until the next publication, so a reader that resolved `..data`
//! just before a swap still opens its file; older ones are wiped (zeroed,
//! then removed).

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{fchown, symlink, DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use rustix::mount::{MountFlags, UnmountFlags};

use crate::tasks::TaskFile;
use crate::VaultError;

/// The symlink to the current generation.
pub const DATA_LINK: &str = "..data";
/// Linux's `TMPFS_MAGIC`, the `f_type` of a tmpfs in `statfs`.
const TMPFS_MAGIC: i64 = 0x0102_1994;
/// The smallest tmpfs this mounts.
const TMPFS_BYTES_MIN: u64 = 256 * 1024;
const PAGE: u64 = 4096;

/// What holds a mounted directory's files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Medium {
    /// A tmpfs mounted on the directory by [`prepare`], unmounted by
    /// [`wipe`].
    OwnTmpfs,
    /// The directory was already on a tmpfs, and this process may not
    /// mount one.
    ExistingTmpfs,
}

impl Medium {
    pub fn as_str(self) -> &'static str {
        match self {
            Medium::OwnTmpfs => "tmpfs",
            Medium::ExistingTmpfs => "existing-tmpfs",
        }
    }

    pub fn parse(text: &str) -> Option<Medium> {
        match text {
            "tmpfs" => Some(Medium::OwnTmpfs),
            "existing-tmpfs" => Some(Medium::ExistingTmpfs),
            _ => None,
        }
    }
}

fn io(what: &str, path: &Path, e: impl std::fmt::Display) -> VaultError {
    VaultError::Io(format!("{what} {}: {e}", path.display()))
}

fn flags() -> MountFlags {
    MountFlags::NODEV | MountFlags::NOSUID | MountFlags::NOEXEC
}

/// Whether `path` is on a tmpfs.
pub fn on_tmpfs(path: &Path) -> Result<bool, VaultError> {
    let stat = rustix::fs::statfs(path).map_err(|e| io("checking", path, e))?;
    #[allow(clippy::unnecessary_cast)]
    Ok(stat.f_type as i64 == TMPFS_MAGIC)
}

/// Whether `dir` is a mount point (on another device than its parent).
pub fn is_mount_point(dir: &Path) -> Result<bool, VaultError> {
    use std::os::unix::fs::MetadataExt;
    let parent = dir.parent().unwrap_or(Path::new("/"));
    let (here, above) = (
        fs::metadata(dir).map_err(|e| io("checking", dir, e))?,
        fs::metadata(parent).map_err(|e| io("checking", parent, e))?,
    );
    Ok(here.dev() != above.dev())
}

/// The tmpfs size that holds `files` twice (the set being published and
/// the previous one), with room for directories and links.
pub fn size_for(files: &[TaskFile]) -> u64 {
    let pages: u64 = files
        .iter()
        .map(|f| (f.data.len() as u64).div_ceil(PAGE) * PAGE)
        .sum();
    (2 * pages + PAGE * (files.len() as u64 * 2 + 16)).max(TMPFS_BYTES_MIN)
}

/// Makes `dir` ready for secrets: creates it (and its parents) if
/// missing, refuses it unless empty, and mounts a fresh tmpfs of `size`
/// bytes on it (`nodev,nosuid,noexec`, mode 0755). A process that may not
/// mount takes a directory that is already on a tmpfs; anything else is
/// refused, with nothing written.
pub fn prepare(dir: &Path, size: u64) -> Result<Medium, VaultError> {
    if !dir.is_absolute() {
        return Err(VaultError::Invalid(format!(
            "{}: the mount directory must be an absolute path",
            dir.display()
        )));
    }
    match fs::symlink_metadata(dir) {
        Ok(meta) if meta.is_dir() => {
            let mut entries = fs::read_dir(dir).map_err(|e| io("reading", dir, e))?;
            if entries.next().is_some() {
                return Err(VaultError::Precondition(format!(
                    "{} is not empty: mount a task's secrets on an empty directory",
                    dir.display()
                )));
            }
        }
        Ok(_) => {
            return Err(VaultError::Precondition(format!(
                "{} is not a directory",
                dir.display()
            )))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            fs::DirBuilder::new()
                .mode(0o755)
                .recursive(true)
                .create(dir)
                .map_err(|e| io("creating", dir, e))?;
        }
        Err(e) => return Err(io("checking", dir, e)),
    }
    let data = std::ffi::CString::new(format!("size={size},mode=0755"))
        .map_err(|e| io("mounting a tmpfs on", dir, e))?;
    match rustix::mount::mount("tmpfs", dir, "tmpfs", flags(), data.as_c_str()) {
        Ok(()) => Ok(Medium::OwnTmpfs),
        Err(e) if e == rustix::io::Errno::PERM => {
            if on_tmpfs(dir)? {
                Ok(Medium::ExistingTmpfs)
            } else {
                Err(VaultError::Precondition(format!(
                    "{} is not on a tmpfs, and this process may not mount one (that needs root or CAP_SYS_ADMIN): secrets are never written to a disk-backed filesystem; give a directory on a tmpfs, or run the server as root",
                    dir.display()
                )))
            }
        }
        Err(e) => Err(io("mounting a tmpfs on", dir, e)),
    }
}

/// Grows the tmpfs [`prepare`] mounted on `dir` to `size` bytes.
pub fn resize(dir: &Path, size: u64) -> Result<(), VaultError> {
    let data = format!("size={size}");
    rustix::mount::mount_remount(dir, flags(), data.as_str())
        .map_err(|e| io("resizing the tmpfs on", dir, e))
}

/// Publishes `files` in `dir` as one new generation, then removes what
/// is older than the one it replaced. Refused unless `dir` is on a tmpfs.
pub fn publish(dir: &Path, files: &[TaskFile]) -> Result<(), VaultError> {
    if !on_tmpfs(dir)? {
        return Err(VaultError::Precondition(format!(
            "{} is no longer on a tmpfs: nothing is written there (was it unmounted?)",
            dir.display()
        )));
    }
    let generation = format!(
        "..{}.{:08x}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
        rand::random::<u32>()
    );
    let new = dir.join(&generation);
    fs::DirBuilder::new()
        .mode(0o755)
        .create(&new)
        .map_err(|e| io("creating", &new, e))?;
    for f in files {
        let path = new.join(&f.file.target);
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
            .open(&path)
            .map_err(|e| io("creating", &path, e))?;
        file.write_all(&f.data)
            .map_err(|e| io("writing", &path, e))?;
        fchown(&file, Some(f.file.uid), Some(f.file.gid))
            .map_err(|e| io("setting the owner of", &path, e))?;
        file.set_permissions(fs::Permissions::from_mode(f.file.mode))
            .map_err(|e| io("setting the mode of", &path, e))?;
    }
    let previous = fs::read_link(dir.join(DATA_LINK)).ok();
    // The swap: a new link, renamed over the old one in one step.
    let staged = dir.join("..data_tmp");
    let _ = fs::remove_file(&staged);
    symlink(&generation, &staged).map_err(|e| io("linking", &staged, e))?;
    fs::rename(&staged, dir.join(DATA_LINK)).map_err(|e| io("publishing", dir, e))?;
    // The files' own links: added for new targets, removed for old ones.
    let wanted: std::collections::BTreeSet<&str> =
        files.iter().map(|f| f.file.target.as_str()).collect();
    for target in &wanted {
        let link = dir.join(target);
        if fs::symlink_metadata(&link).is_err() {
            symlink(Path::new(DATA_LINK).join(target), &link)
                .map_err(|e| io("linking", &link, e))?;
        }
    }
    for entry in fs::read_dir(dir).map_err(|e| io("reading", dir, e))? {
        let entry = entry.map_err(|e| io("reading", dir, e))?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with("..") {
            let keep = name == DATA_LINK
                || name == generation.as_str()
                || previous.as_deref() == Some(Path::new(name.as_ref()));
            if !keep {
                wipe_generation(&entry.path())?;
            }
        } else if !wanted.contains(name.as_ref()) {
            fs::remove_file(entry.path()).map_err(|e| io("removing", &entry.path(), e))?;
        }
    }
    Ok(())
}

/// Zeroes and removes every file of a generation, then the directory.
fn wipe_generation(path: &Path) -> Result<(), VaultError> {
    let meta = fs::symlink_metadata(path).map_err(|e| io("checking", path, e))?;
    if !meta.is_dir() {
        return fs::remove_file(path).map_err(|e| io("removing", path, e));
    }
    for entry in fs::read_dir(path).map_err(|e| io("reading", path, e))? {
        let file = entry.map_err(|e| io("reading", path, e))?.path();
        zero(&file)?;
        fs::remove_file(&file).map_err(|e| io("removing", &file, e))?;
    }
    fs::remove_dir(path).map_err(|e| io("removing", path, e))
}

/// Overwrites a regular file with zeros (not following links).
fn zero(path: &Path) -> Result<(), VaultError> {
    let meta = fs::symlink_metadata(path).map_err(|e| io("checking", path, e))?;
    if !meta.is_file() {
        return Ok(());
    }
    let mut file = OpenOptions::new()
        .write(true)
        .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
        .open(path)
        .map_err(|e| io("opening", path, e))?;
    let zeros = [0u8; 64 * 1024];
    let mut left = meta.len();
    while left > 0 {
        let n = usize::try_from(left).map_or(zeros.len(), |left| left.min(zeros.len()));
        file.write_all(&zeros[..n])
            .map_err(|e| io("wiping", path, e))?;
        left -= n as u64;
    }
    file.sync_data().map_err(|e| io("wiping", path, e))
}

/// Wipes every file this module published in `dir` and, for
/// [`Medium::OwnTmpfs`], unmounts the tmpfs. The directory stays.
pub fn wipe(dir: &Path, medium: Medium) -> Result<(), VaultError> {
    match fs::read_dir(dir) {
        Ok(entries) => {
            for entry in entries {
                let entry = entry.map_err(|e| io("reading", dir, e))?;
                let path: PathBuf = entry.path();
                let name = entry.file_name();
                if name.to_string_lossy().starts_with("..") {
                    wipe_generation(&path)?;
                } else if fs::symlink_metadata(&path).is_ok_and(|m| m.file_type().is_symlink()) {
                    fs::remove_file(&path).map_err(|e| io("removing", &path, e))?;
                }
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io("reading", dir, e)),
    }
    if medium == Medium::OwnTmpfs && is_mount_point(dir)? {
        // A process with its working directory or a file open there keeps
        // the mount busy: detach it (it goes once they are done).
        if let Err(e) = rustix::mount::unmount(dir, UnmountFlags::empty()) {
            if e != rustix::io::Errno::BUSY {
                return Err(io("unmounting", dir, e));
            }
            rustix::mount::unmount(dir, UnmountFlags::DETACH)
                .map_err(|e| io("unmounting", dir, e))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tasks::FileRef;
    use std::os::unix::fs::MetadataExt;
    use zeroize::Zeroizing;

    fn file(target: &str, data: &[u8], mode: u32) -> TaskFile {
        TaskFile {
            file: FileRef {
                target: target.into(),
                uid: 1000,
                gid: 1001,
                mode,
                secret_id: "s".into(),
                version: 1,
            },
            data: Zeroizing::new(data.to_vec()),
        }
    }

    /// A temporary directory on a disk-backed filesystem.
    fn on_disk() -> tempfile::TempDir {
        [
            std::env::temp_dir(),
            PathBuf::from(env!("CARGO_MANIFEST_DIR")),
        ]
        .into_iter()
        .find(|d| !on_tmpfs(d).unwrap())
        .map(|d| tempfile::tempdir_in(d).unwrap())
        .unwrap()
    }

    fn names(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn generations_are_swapped_whole_and_old_ones_wiped() {
        let shm = tempfile::tempdir_in("/dev/shm").unwrap();
        let dir = shm.path();
        publish(dir, &[file("a", b"one", 0o400), file("b", b"two", 0o444)]).unwrap();
        assert_eq!(fs::read(dir.join("a")).unwrap(), b"one");
        let meta = fs::metadata(dir.join("a")).unwrap();
        assert_eq!(
            (meta.uid(), meta.gid(), meta.mode() & 0o7777),
            (1000, 1001, 0o400)
        );
        assert_eq!(fs::metadata(dir.join("b")).unwrap().mode() & 0o7777, 0o444);
        assert!(fs::symlink_metadata(dir.join("a"))
            .unwrap()
            .file_type()
            .is_symlink());

        // B goes, c comes; the previous generation stays, older ones go.
        publish(dir, &[file("a", b"uno", 0o400), file("c", b"tres", 0o444)]).unwrap();
        publish(dir, &[file("a", b"eins", 0o400), file("c", b"drei", 0o444)]).unwrap();
        assert_eq!(fs::read(dir.join("a")).unwrap(), b"eins");
        assert_eq!(fs::read(dir.join("c")).unwrap(), b"drei");
        let listed = names(dir);
        let generations = listed
            .iter()
            .filter(|n| n.starts_with("..") && *n != DATA_LINK)
            .count();
        assert_eq!(generations, 2, "{listed:?}");
        assert!(!dir.join("b").exists() && fs::symlink_metadata(dir.join("b")).is_err());

        wipe(dir, Medium::ExistingTmpfs).unwrap();
        assert!(names(dir).is_empty());
    }

    #[test]
    fn a_disk_directory_gets_nothing_written() {
        let disk = on_disk();
        let dir = disk.path();
        assert!(!on_tmpfs(dir).unwrap());
        let refused = publish(dir, &[file("a", b"secret-bytes", 0o444)]);
        assert!(
            matches!(refused, Err(VaultError::Precondition(_))),
            "{refused:?}"
        );
        assert!(names(dir).is_empty());
    }

    #[test]
    fn a_fresh_tmpfs_is_mounted_and_unmounted() {
        let disk = on_disk();
        let dir = disk.path().join("secrets");
        let files = [file("a", b"one", 0o444)];
        assert_eq!(prepare(&dir, size_for(&files)).unwrap(), Medium::OwnTmpfs);
        assert!(is_mount_point(&dir).unwrap() && on_tmpfs(&dir).unwrap());
        publish(&dir, &files).unwrap();
        resize(&dir, size_for(&files) * 2).unwrap();
        assert_eq!(fs::read(dir.join("a")).unwrap(), b"one");
        // Not twice on the same directory, and never on a non-empty one.
        assert!(prepare(&dir, 1 << 20).is_err());
        wipe(&dir, Medium::OwnTmpfs).unwrap();
        assert!(!is_mount_point(&dir).unwrap());
        assert!(names(&dir).is_empty());
        assert!(prepare(Path::new("relative"), 1 << 20).is_err());
    }
}
