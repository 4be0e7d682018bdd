//! A replica's data directory copied whole, as the M6 tests (a restored or cloned Raft volume
//! must not vote or count) make a backup, restore it after the replica ran on, or clone a
//! running replica's volume.

use std::path::Path;

/// Copies the directory `from` (files and subdirectories) into `to`, created if missing.
pub fn copy_dir(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_dir(&entry.path(), &target)?;
        } else {
            std::fs::copy(entry.path(), &target)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tree_is_copied_byte_for_byte() {
        let from = tempfile_dir("from");
        std::fs::create_dir_all(from.join("tls")).unwrap();
        std::fs::write(from.join("raft.redb"), [0u8, 1, 2, 255]).unwrap();
        std::fs::write(from.join("tls/replica.key"), "key").unwrap();
        let to = tempfile_dir("to");
        copy_dir(&from, &to.join("copy")).unwrap();
        assert_eq!(
            std::fs::read(to.join("copy/raft.redb")).unwrap(),
            [0u8, 1, 2, 255]
        );
        assert_eq!(
            std::fs::read_to_string(to.join("copy/tls/replica.key")).unwrap(),
            "key"
        );
        assert!(copy_dir(&from.join("missing"), &to.join("x")).is_err());
    }

    /// A fresh directory under the system's temp dir for this test.
    fn tempfile_dir(name: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "portico-test-support-volume-{}-{name}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }
}
