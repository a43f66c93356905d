//! Which paths of a workspace changed since the last look, from Linux inotify: every
//! directory of the checkout is watched, so after a job the workspace is reset by fixing
//! only what the job touched instead of comparing every file. Anything doubtful (the
//! kernel's event queue overflowed, a watch could not be added, no inotify on this system)
//! makes the caller fall back to a full comparison, so tracking only ever saves work.
//!
//! What it sees: files created, deleted, renamed, written (including through `mmap`, as a
//! close after writing), truncated, or with changed modes, times or link counts, in the
//! watched directories; directories created, deleted or renamed. A directory the job
//! created is not watched: it is reported as created and removed whole.

use std::collections::BTreeSet;
use std::path::Path;

/// What changed since the last [`Tracker::changes`].
#[derive(Debug)]
pub(crate) enum Changes {
    /// Paths relative to the workspace root (`""` is the root itself).
    Paths(BTreeSet<String>),
    /// Events were lost: compare everything.
    Unknown,
}

#[cfg(target_os = "linux")]
pub(crate) use linux::Tracker;

#[cfg(not(target_os = "linux"))]
pub(crate) use fallback::Tracker;

#[cfg(target_os = "linux")]
mod linux {
    use super::*;
    use std::collections::HashMap;
    use std::ffi::CString;
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    use std::os::unix::ffi::OsStrExt;

    const MASK: u32 = libc::IN_MODIFY
        | libc::IN_ATTRIB
        | libc::IN_CLOSE_WRITE
        | libc::IN_MOVED_FROM
        | libc::IN_MOVED_TO
        | libc::IN_CREATE
        | libc::IN_DELETE
        | libc::IN_DELETE_SELF
        | libc::IN_MOVE_SELF
        | libc::IN_ONLYDIR
        | libc::IN_DONT_FOLLOW
        | libc::IN_EXCL_UNLINK;

    /// One inotify instance watching the directories of one workspace.
    pub(crate) struct Tracker {
        fd: OwnedFd,
        /// Watch descriptor → directory, relative to the root.
        dirs: HashMap<i32, String>,
        /// Directory → watch descriptor.
        wds: HashMap<String, i32>,
        lost: bool,
        /// Where events are read (kept: a reset reads several times, usually nothing).
        buf: Vec<u8>,
    }

    impl Tracker {
        pub(crate) fn new() -> Option<Tracker> {
            // SAFETY: inotify_init1 takes flags only and returns a new descriptor or -1.
            let fd = unsafe { libc::inotify_init1(libc::IN_NONBLOCK | libc::IN_CLOEXEC) };
            if fd < 0 {
                return None;
            }
            Some(Tracker {
                // SAFETY: `fd` is a fresh descriptor owned by nobody else.
                fd: unsafe { OwnedFd::from_raw_fd(fd) },
                dirs: HashMap::new(),
                wds: HashMap::new(),
                lost: false,
                buf: vec![0u8; 64 * 1024],
            })
        }

        /// Watch the directory `root/rel` (a missing one needs no watch). False when the
        /// kernel refuses (watch limit): the caller then stops relying on the tracker.
        pub(crate) fn watch(&mut self, root: &Path, rel: &str) -> bool {
            let path = if rel.is_empty() {
                root.to_path_buf()
            } else {
                root.join(rel)
            };
            let Ok(c) = CString::new(path.as_os_str().as_bytes()) else {
                return false;
            };
            // SAFETY: a valid descriptor and a NUL-terminated path.
            let wd = unsafe { libc::inotify_add_watch(self.fd.as_raw_fd(), c.as_ptr(), MASK) };
            if wd < 0 {
                // A directory that is not there: its creation shows at its parent.
                return std::io::Error::last_os_error().kind() == std::io::ErrorKind::NotFound;
            }
            if let Some(old) = self.dirs.insert(wd, rel.to_string()) {
                // The same directory watched again under another name (it was renamed).
                self.wds.remove(&old);
            }
            self.wds.insert(rel.to_string(), wd);
            true
        }

        /// Stop watching `rel` and every directory below it.
        pub(crate) fn unwatch_under(&mut self, rel: &str) {
            let prefix = format!("{rel}/");
            let gone: Vec<String> = self
                .wds
                .keys()
                .filter(|d| rel.is_empty() || *d == rel || d.starts_with(&prefix))
                .cloned()
                .collect();
            for d in gone {
                if let Some(wd) = self.wds.remove(&d) {
                    self.dirs.remove(&wd);
                    // SAFETY: removing a watch by descriptor; an already gone one is EINVAL.
                    unsafe {
                        libc::inotify_rm_watch(self.fd.as_raw_fd(), wd);
                    }
                }
            }
        }

        /// Stop watching everything, keeping the instance open. Closing an inotify
        /// instance that still has watches waits for the kernel to free them (an RCU grace
        /// period: milliseconds); watches removed a while before the close are freed in
        /// the background, and the close then returns at once.
        pub(crate) fn retire(&mut self) {
            for (wd, _) in self.dirs.drain() {
                // SAFETY: removing a watch by descriptor; an already gone one is EINVAL.
                unsafe {
                    libc::inotify_rm_watch(self.fd.as_raw_fd(), wd);
                }
            }
            self.wds.clear();
            self.lost = true;
        }

        /// Everything that changed since the last call.
        pub(crate) fn changes(&mut self) -> Changes {
            let mut paths = BTreeSet::new();
            self.read(&mut |p| {
                paths.insert(p);
            });
            if std::mem::take(&mut self.lost) {
                Changes::Unknown
            } else {
                Changes::Paths(paths)
            }
        }

        /// Drop pending events (the caller's own changes), keeping the watch table right.
        pub(crate) fn discard(&mut self) {
            self.read(&mut |_| {});
            // Lost events at this point were the caller's own.
            self.lost = false;
        }

        fn read(&mut self, found: &mut dyn FnMut(String)) {
            let mut buf = std::mem::take(&mut self.buf);
            self.read_into(&mut buf, found);
            self.buf = buf;
        }

        fn read_into(&mut self, buf: &mut [u8], found: &mut dyn FnMut(String)) {
            loop {
                // SAFETY: reading into a buffer we own, of the length given.
                let n = unsafe {
                    libc::read(
                        self.fd.as_raw_fd(),
                        buf.as_mut_ptr().cast::<libc::c_void>(),
                        buf.len(),
                    )
                };
                if n <= 0 {
                    // EAGAIN: nothing more queued. Any other error: trust nothing.
                    if n < 0
                        && std::io::Error::last_os_error().kind() != std::io::ErrorKind::WouldBlock
                    {
                        self.lost = true;
                    }
                    return;
                }
                let n = n as usize;
                let mut at = 0;
                // struct inotify_event { int wd; uint32_t mask, cookie, len; char name[len]; }
                while at + 16 <= n {
                    let word = |i: usize| {
                        let b = &buf[at + i..at + i + 4];
                        [b[0], b[1], b[2], b[3]]
                    };
                    let wd = i32::from_ne_bytes(word(0));
                    let mask = u32::from_ne_bytes(word(4));
                    let len = u32::from_ne_bytes(word(12)) as usize;
                    let name_bytes = &buf[(at + 16).min(n)..(at + 16 + len).min(n)];
                    at += 16 + len;
                    if mask & libc::IN_Q_OVERFLOW != 0 {
                        self.lost = true;
                        continue;
                    }
                    let Some(dir) = self.dirs.get(&wd).cloned() else {
                        continue;
                    };
                    if mask & libc::IN_IGNORED != 0 {
                        // The directory is gone (deleted, or its file system unmounted).
                        self.dirs.remove(&wd);
                        if self.wds.get(&dir) == Some(&wd) {
                            self.wds.remove(&dir);
                        }
                        found(dir);
                        continue;
                    }
                    let end = name_bytes
                        .iter()
                        .position(|b| *b == 0)
                        .unwrap_or(name_bytes.len());
                    let name = &name_bytes[..end];
                    if name.is_empty() {
                        found(dir);
                        continue;
                    }
                    let Ok(name) = std::str::from_utf8(name) else {
                        // A name the checkout cannot hold: the directory is compared whole.
                        found(dir);
                        continue;
                    };
                    found(if dir.is_empty() {
                        name.to_string()
                    } else {
                        format!("{dir}/{name}")
                    });
                }
            }
        }
    }
}

#[cfg(not(target_os = "linux"))]
mod fallback {
    use super::*;

    /// No change notification here: every reset compares the whole workspace.
    pub(crate) struct Tracker;

    impl Tracker {
        pub(crate) fn new() -> Option<Tracker> {
            None
        }
        pub(crate) fn watch(&mut self, _root: &Path, _rel: &str) -> bool {
            false
        }
        pub(crate) fn unwatch_under(&mut self, _rel: &str) {}
        pub(crate) fn retire(&mut self) {}
        pub(crate) fn changes(&mut self) -> Changes {
            Changes::Unknown
        }
        pub(crate) fn discard(&mut self) {}
    }
}
