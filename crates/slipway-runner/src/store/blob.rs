//! Content-addressed blobs: each distinct file content is stored once, zstd-compressed,
//! under `objects/ab/cdef…` where `abcdef…` is the SHA-256 of the uncompressed bytes.
//!
//! A blob is written to a temporary file in its final directory and renamed into place,
//! so a reader never sees part of one, and two writers of the same blob are harmless
//! (both renames install identical bytes). Reading verifies the hash and size.

use super::fsutil::{create_temp, hex, invalid_data, PathContext};
use sha2::{Digest, Sha256};
use std::fs::{self, File};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

/// Files up to this size are read, compressed and decompressed in memory.
const SMALL: u64 = 1 << 20;
const CHUNK: usize = 256 * 1024;
const LEVEL: i32 = 3;

/// Reusable compression contexts (allocating one per file is costly for many small
/// files), each made when first needed.
pub(crate) struct Codec {
    comp: Option<zstd::bulk::Compressor<'static>>,
    decomp: Option<zstd::bulk::Decompressor<'static>>,
    buf: Vec<u8>,
}

thread_local! {
    /// One codec per thread, kept between calls: a job extracting a few small files
    /// should not pay for creating zstd contexts each time.
    static CODEC: std::cell::RefCell<Option<Codec>> = const { std::cell::RefCell::new(None) };
}

/// Run `f` with this thread's codec.
pub(crate) fn with_codec<T>(f: impl FnOnce(&mut Codec) -> io::Result<T>) -> io::Result<T> {
    let mut codec = CODEC
        .with(|c| c.borrow_mut().take())
        .unwrap_or_else(Codec::new);
    let result = f(&mut codec);
    // Do not keep a large file's buffer alive.
    if codec.buf.capacity() > 2 * SMALL as usize {
        codec.buf = Vec::new();
    }
    CODEC.with(|c| *c.borrow_mut() = Some(codec));
    result
}

impl Codec {
    pub(crate) fn new() -> Codec {
        Codec {
            comp: None,
            decomp: None,
            buf: Vec::new(),
        }
    }

    fn compressor(&mut self) -> io::Result<&mut zstd::bulk::Compressor<'static>> {
        if self.comp.is_none() {
            self.comp = Some(zstd::bulk::Compressor::new(LEVEL)?);
        }
        self.comp
            .as_mut()
            .ok_or_else(|| io::Error::other("no zstd compressor"))
    }

    fn decompressor(&mut self) -> io::Result<&mut zstd::bulk::Decompressor<'static>> {
        if self.decomp.is_none() {
            self.decomp = Some(zstd::bulk::Decompressor::new()?);
        }
        self.decomp
            .as_mut()
            .ok_or_else(|| io::Error::other("no zstd decompressor"))
    }
}

/// What storing a file did.
pub(crate) struct Put {
    pub hash: String,
    pub size: u64,
}

pub(crate) struct Blobs {
    dir: PathBuf,
}

pub(crate) fn is_hash(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

impl Blobs {
    pub(crate) fn new(dir: PathBuf) -> Blobs {
        Blobs { dir }
    }

    pub(crate) fn path(&self, hash: &str) -> PathBuf {
        let (a, b) = hash.split_at(2.min(hash.len()));
        self.dir.join(a).join(b)
    }

    /// Store the content of `file` (opened from `src`). Returns its hash and size.
    pub(crate) fn put_file(
        &self,
        file: &mut File,
        src: &Path,
        codec: &mut Codec,
    ) -> io::Result<Put> {
        let len = file.metadata().at("cannot stat", src)?.len();
        if len <= SMALL {
            codec.buf.clear();
            file.read_to_end(&mut codec.buf).at("cannot read", src)?;
            let hash = hex(&Sha256::digest(&codec.buf));
            let size = codec.buf.len() as u64;
            let dest = self.path(&hash);
            if self.present(&dest) {
                return Ok(Put { hash, size });
            }
            let buf = std::mem::take(&mut codec.buf);
            let compressed = codec
                .compressor()?
                .compress(&buf)
                .at("cannot compress", src);
            codec.buf = buf;
            let compressed = compressed?;
            self.install(&dest, |f, tmp| {
                f.write_all(&compressed).at("cannot write", tmp)
            })?;
            return Ok(Put { hash, size });
        }

        // Large file: hash first (it may already be stored), then compress while hashing
        // again, so a file that changes in between is caught rather than stored wrong.
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; CHUNK];
        let mut size = 0u64;
        loop {
            let n = file.read(&mut buf).at("cannot read", src)?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            size += n as u64;
        }
        let hash = hex(&hasher.finalize());
        let dest = self.path(&hash);
        if self.present(&dest) {
            return Ok(Put { hash, size });
        }
        file.seek(SeekFrom::Start(0)).at("cannot read", src)?;
        self.install(&dest, |out, tmp| {
            let mut enc = zstd::stream::Encoder::new(out, LEVEL).at("cannot compress", src)?;
            let mut again = Sha256::new();
            loop {
                let n = file.read(&mut buf).at("cannot read", src)?;
                if n == 0 {
                    break;
                }
                again.update(&buf[..n]);
                enc.write_all(&buf[..n]).at("cannot write", tmp)?;
            }
            enc.finish().at("cannot write", tmp)?;
            if hex(&again.finalize()) != hash {
                return Err(io::Error::other(format!(
                    "{} changed while it was being stored",
                    src.display()
                )));
            }
            Ok(())
        })?;
        Ok(Put { hash, size })
    }

    /// Whether the blob exists; if so, refresh its modification time so a concurrent
    /// garbage collection (which spares recent blobs) does not remove a blob that a
    /// manifest about to be written is reusing.
    fn present(&self, dest: &Path) -> bool {
        match File::open(dest) {
            Ok(f) => {
                let _ = f.set_modified(SystemTime::now());
                true
            }
            Err(_) => false,
        }
    }

    fn install(
        &self,
        dest: &Path,
        write: impl FnOnce(&mut File, &Path) -> io::Result<()>,
    ) -> io::Result<()> {
        let dir = dest
            .parent()
            .ok_or_else(|| invalid_data(format!("bad blob path {}", dest.display())))?;
        // Creating the shard directory only when missing: `mkdir` of an existing
        // directory is not free, and almost every blob lands in an existing shard.
        let (mut f, tmp) = match create_temp(dir) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                fs::create_dir_all(dir).at("cannot create directory", dir)?;
                create_temp(dir)?
            }
            r => r?,
        };
        let done = write(&mut f, &tmp).and_then(|()| {
            drop(f);
            fs::rename(&tmp, dest).at("cannot rename into place", dest)
        });
        if done.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        done
    }

    /// Write blob `hash` (of `size` bytes) to `out`, verifying it.
    pub(crate) fn write_to(
        &self,
        hash: &str,
        size: u64,
        out: &mut File,
        out_path: &Path,
        codec: &mut Codec,
    ) -> io::Result<()> {
        let path = self.path(hash);
        let mut file = File::open(&path).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!(
                    "cannot open blob {} for {}: {e}",
                    path.display(),
                    out_path.display()
                ),
            )
        })?;
        let corrupt = || {
            invalid_data(format!(
                "blob {} is corrupt (for {})",
                path.display(),
                out_path.display()
            ))
        };
        if size <= SMALL {
            codec.buf.clear();
            file.read_to_end(&mut codec.buf)
                .at("cannot read blob", &path)?;
            // Capacity one past the expected size, so a longer blob is detected.
            let buf = std::mem::take(&mut codec.buf);
            let data = codec
                .decompressor()?
                .decompress(&buf, size as usize + 1)
                .map_err(|_| corrupt());
            codec.buf = buf;
            let data = data?;
            if data.len() as u64 != size || hex(&Sha256::digest(&data)) != hash {
                return Err(corrupt());
            }
            out.write_all(&data).at("cannot write", out_path)?;
            return Ok(());
        }
        let mut dec = zstd::stream::Decoder::new(file).at("cannot read blob", &path)?;
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; CHUNK];
        let mut n_total = 0u64;
        loop {
            let n = dec.read(&mut buf).map_err(|_| corrupt())?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            n_total += n as u64;
            out.write_all(&buf[..n]).at("cannot write", out_path)?;
        }
        if n_total != size || hex(&hasher.finalize()) != hash {
            return Err(corrupt());
        }
        Ok(())
    }
}
