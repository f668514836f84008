//! Opening inputs and replacing outputs without trusting what a path names.
//!
//! An input must be a regular file: a FIFO in place of a checkpoint file would
//! block a read forever, and a device never ends. An output is written whole
//! through a temporary file renamed over the target, so an interrupted run never
//! leaves a truncated file under the requested name; but only a regular file is
//! replaced that way (renaming over `/dev/full` replaced the device node).

use std::fs::{File, Metadata, OpenOptions};
use std::io::{self, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

/// What a non-regular file is, for messages.
pub fn kind_of(meta: &Metadata) -> &'static str {
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        let t = meta.file_type();
        if t.is_fifo() {
            return "a FIFO";
        }
        if t.is_char_device() {
            return "a character device";
        }
        if t.is_block_device() {
            return "a block device";
        }
        if t.is_socket() {
            return "a socket";
        }
    }
    if meta.is_dir() {
        "a directory"
    } else if meta.is_symlink() {
        "a symbolic link"
    } else if meta.is_file() {
        "a regular file"
    } else {
        "not a regular file"
    }
}

fn not_regular(meta: &Metadata) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidInput,
        format!("{}, not a regular file", kind_of(meta)),
    )
}

/// Opens `path` for reading if it is a regular file (after symlinks). The open
/// does not block on a FIFO (`O_NONBLOCK`, which regular files ignore), and
/// the type is checked on the opened file, so a path swapped in between is
/// caught too.
pub fn open_regular(path: &Path) -> io::Result<File> {
    let mut options = OpenOptions::new();
    options.read(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.custom_flags(libc::O_NONBLOCK);
    }
    let file = options.open(path)?;
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Err(not_regular(&meta));
    }
    Ok(file)
}

/// The bytes of the regular file `path` (see [`open_regular`]).
pub fn read_regular(path: &Path) -> io::Result<Vec<u8>> {
    let mut file = open_regular(path)?;
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes)?;
    Ok(bytes)
}

/// The text of the regular file `path` (see [`open_regular`]).
pub fn read_regular_to_string(path: &Path) -> io::Result<String> {
    String::from_utf8(read_regular(path)?)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.utf8_error()))
}

/// Where [`write_output`] puts the bytes for `path`.
enum Target {
    /// Replace this regular file (or create it) by renaming a temporary file
    /// over it: `path` itself, or the file a symlink at `path` leads to.
    Replace(PathBuf),
    /// Write into the FIFO or character device `path` as it is.
    Through,
}

fn target_of(path: &Path) -> io::Result<Target> {
    match std::fs::metadata(path) {
        // Renaming over the link's target keeps the link (and its meaning).
        Ok(meta) if meta.is_file() => Ok(Target::Replace(std::fs::canonicalize(path)?)),
        Ok(meta) => {
            #[cfg(unix)]
            {
                use std::os::unix::fs::FileTypeExt;
                let t = meta.file_type();
                if t.is_fifo() || t.is_char_device() {
                    return Ok(Target::Through);
                }
            }
            // A directory, block device or socket: nothing sensible to write.
            Err(not_regular(&meta))
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            if std::fs::symlink_metadata(path).is_ok() {
                return Err(io::Error::new(
                    io::ErrorKind::NotFound,
                    "a symbolic link to a missing file",
                ));
            }
            Ok(Target::Replace(path.to_path_buf()))
        }
        Err(e) => Err(e),
    }
}

/// Writes the output file `path` with `write`. A regular file (or a new one) is
/// replaced whole: written to a temporary file beside it and renamed over it,
/// keeping the old file's permissions; a symlink is followed and its target
/// replaced. A FIFO or a character device (`/dev/stdout`) is written through,
/// never replaced. A directory, block device or socket is refused.
pub fn write_output(
    path: &Path,
    write: impl FnOnce(&mut dyn Write) -> io::Result<()>,
) -> io::Result<()> {
    match target_of(path)? {
        Target::Through => {
            let file = OpenOptions::new().write(true).open(path)?;
            let mut w = BufWriter::with_capacity(1 << 20, file);
            write(&mut w)?;
            w.flush()
        }
        Target::Replace(target) => replace(&target, write),
    }
}

fn replace(target: &Path, write: impl FnOnce(&mut dyn Write) -> io::Result<()>) -> io::Result<()> {
    let dir = match target.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let name = target
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let prefix = format!(".{name}.");
    let mut builder = tempfile::Builder::new();
    builder.prefix(&prefix).suffix(".partial");
    // Created as `File::create` would (0666 less the umask), or with the mode
    // of the file it replaces.
    #[cfg(unix)]
    let permissions = {
        use std::os::unix::fs::PermissionsExt;
        std::fs::metadata(target)
            .map(|m| m.permissions())
            .unwrap_or_else(|_| std::fs::Permissions::from_mode(0o666))
    };
    #[cfg(unix)]
    builder.permissions(permissions.clone());
    let tmp = builder.tempfile_in(dir)?;
    let mut w = BufWriter::with_capacity(1 << 20, tmp);
    write(&mut w)?;
    let tmp = w.into_inner().map_err(io::IntoInnerError::into_error)?;
    // The umask applied at creation; an existing file's mode is kept exactly.
    #[cfg(unix)]
    if target.exists() {
        tmp.as_file().set_permissions(permissions)?;
    }
    tmp.persist(target).map_err(|e| e.error)?;
    Ok(())
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};

    fn mkfifo(path: &Path) {
        let status = std::process::Command::new("mkfifo")
            .arg(path)
            .status()
            .unwrap();
        assert!(status.success());
    }

    fn write_text(path: &Path, text: &'static str) -> io::Result<()> {
        write_output(path, |w| w.write_all(text.as_bytes()))
    }

    fn names(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn a_regular_file_is_replaced_whole_keeping_its_mode() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("out.npy");
        write_text(&path, "first").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
        write_text(&path, "second").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "second");
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o640);
        // A failed write leaves the old file and no temporary one.
        let err = write_output(&path, |w| {
            w.write_all(b"partial")?;
            Err(io::Error::other("interrupted"))
        })
        .unwrap_err();
        assert_eq!(err.to_string(), "interrupted");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "second");
        assert_eq!(names(tmp.path()), ["out.npy"]);
    }

    #[test]
    fn a_symlink_is_followed_and_kept() {
        let tmp = tempfile::tempdir().unwrap();
        let target = tmp.path().join("target.npy");
        let link = tmp.path().join("link.npy");
        std::fs::write(&target, "old").unwrap();
        std::os::unix::fs::symlink("target.npy", &link).unwrap();
        write_text(&link, "new").unwrap();
        assert!(link.symlink_metadata().unwrap().is_symlink());
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "new");
        let dangling = tmp.path().join("dangling.npy");
        std::os::unix::fs::symlink("missing.npy", &dangling).unwrap();
        let err = write_text(&dangling, "x").unwrap_err();
        assert_eq!(err.to_string(), "a symbolic link to a missing file");
        assert!(!tmp.path().join("missing.npy").exists());
    }

    #[test]
    fn a_fifo_is_written_through_and_a_directory_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let fifo = tmp.path().join("pipe");
        mkfifo(&fifo);
        let reader = {
            let fifo = fifo.clone();
            std::thread::spawn(move || std::fs::read_to_string(fifo).unwrap())
        };
        write_text(&fifo, "through").unwrap();
        assert_eq!(reader.join().unwrap(), "through");
        assert!(fifo.metadata().unwrap().file_type().is_fifo());
        let err = write_text(tmp.path(), "x").unwrap_err();
        assert_eq!(err.to_string(), "a directory, not a regular file");
    }

    #[test]
    fn only_a_regular_file_is_opened_for_reading() {
        let tmp = tempfile::tempdir().unwrap();
        let fifo = tmp.path().join("pipe");
        mkfifo(&fifo);
        // Returns at once (no writer ever opens the FIFO).
        let err = read_regular(&fifo).unwrap_err();
        assert_eq!(err.to_string(), "a FIFO, not a regular file");
        let err = read_regular(tmp.path()).unwrap_err();
        assert_eq!(err.to_string(), "a directory, not a regular file");
        let file = tmp.path().join("f");
        std::fs::write(&file, "bytes").unwrap();
        assert_eq!(read_regular(&file).unwrap(), b"bytes");
    }
}
