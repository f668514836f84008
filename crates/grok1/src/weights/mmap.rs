//! Read-only memory maps of weight files: the one place this crate maps files.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use memmap2::Mmap;

/// A whole weight file mapped read-only. Tensor payloads are views into it, so
/// a 1.6 GB expert tensor is paged in by the OS as the kernels read it, never
/// copied into the heap.
#[derive(Debug)]
pub struct MappedFile {
    path: PathBuf,
    map: Option<Mmap>,
}

impl MappedFile {
    /// Maps `path` read-only; it must be a regular file (a FIFO would block
    /// and a device has no end).
    pub fn open(path: &Path) -> std::io::Result<Arc<MappedFile>> {
        let file = crate::files::open_regular(path)?;
        let len = file.metadata()?.len();
        // Mapping an empty file fails on some platforms; an empty file is simply
        // zero bytes, which the parsers report as truncated.
        let map = if len == 0 {
            None
        } else {
            // SAFETY: the map is read-only and private to this process. Its contract
            // (memmap2) is that the file is not modified or truncated while mapped;
            // weight files are written once and then only read. If another process
            // truncates a file anyway, reading the lost pages raises SIGBUS, which is
            // the documented worst case of mapping files (as in ripgrep's mmap use).
            Some(unsafe { Mmap::map(&file)? })
        };
        Ok(Arc::new(MappedFile {
            path: path.to_path_buf(),
            map,
        }))
    }

    /// Tells the kernel this process is done with `len` bytes at `offset` for
    /// now, so their pages leave its resident set (a conversion reads each
    /// weight once; without this its RSS would grow to the whole model). The
    /// bytes stay valid: a later read faults them in again from the file.
    pub fn release(&self, offset: usize, len: usize) {
        #[cfg(unix)]
        if let Some(map) = &self.map {
            if offset.checked_add(len).is_some_and(|end| end <= map.len()) && len > 0 {
                // SAFETY: MADV_DONTNEED on a read-only shared file mapping only
                // drops this process's page-table entries; the next access
                // repopulates them from the file, whose bytes do not change while
                // mapped (the contract of `open`). Outstanding borrows therefore
                // keep reading the same values. Errors (e.g. an unsupported
                // platform) only mean the pages stay resident.
                let _ = unsafe {
                    map.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, offset, len)
                };
            }
        }
        #[cfg(not(unix))]
        let _ = (offset, len);
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn bytes(&self) -> &[u8] {
        self.map.as_deref().unwrap_or(&[])
    }

    pub fn len(&self) -> usize {
        self.bytes().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
