//! A minimal tar writer (POSIX ustar, with GNU long names) for artifact downloads:
//! regular files, directories and symbolic links, modes and modification times kept.

use std::io::{self, Write};

/// What one archive member is.
pub enum Member<'a> {
    File { mode: u32, data: &'a [u8] },
    Dir { mode: u32 },
    Symlink { target: &'a str },
}

fn octal(field: &mut [u8], value: u64) {
    // Width minus the terminating NUL.
    let width = field.len() - 1;
    let s = format!("{value:0width$o}");
    let bytes = s.as_bytes();
    let start = bytes.len().saturating_sub(width);
    field[..width].copy_from_slice(&bytes[start..]);
    field[width] = 0;
}

fn header(name: &[u8], kind: u8, mode: u32, size: u64, mtime: u64, link: &[u8]) -> [u8; 512] {
    let mut h = [0u8; 512];
    let (prefix, short) = split_name(name);
    h[..short.len()].copy_from_slice(short);
    octal(&mut h[100..108], u64::from(mode & 0o7777));
    octal(&mut h[108..116], 0);
    octal(&mut h[116..124], 0);
    octal(&mut h[124..136], size);
    octal(&mut h[136..148], mtime);
    h[156] = kind;
    let link = &link[..link.len().min(100)];
    h[157..157 + link.len()].copy_from_slice(link);
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    h[345..345 + prefix.len()].copy_from_slice(prefix);
    // The checksum is computed with its own field as spaces.
    h[148..156].copy_from_slice(b"        ");
    let sum: u64 = h.iter().map(|b| u64::from(*b)).sum();
    let s = format!("{sum:06o}\0 ");
    h[148..156].copy_from_slice(s.as_bytes());
    h
}

/// ustar's name split: up to 155 bytes of directories in `prefix`, 100 in `name`.
fn split_name(name: &[u8]) -> (&[u8], &[u8]) {
    if name.len() <= 100 {
        return (&[], name);
    }
    for (i, b) in name.iter().enumerate().rev() {
        if *b == b'/' && i <= 155 && name.len() - i - 1 <= 100 && i > 0 {
            return (&name[..i], &name[i + 1..]);
        }
    }
    // Does not fit: a GNU long-name record precedes it (see `append`).
    (&[], &name[..100])
}

fn pad(w: &mut impl Write, len: u64) -> io::Result<()> {
    let rem = (512 - (len % 512)) % 512;
    w.write_all(&vec![0u8; rem as usize])
}

/// Appends one member.
pub fn append(w: &mut impl Write, path: &str, mtime: u64, m: Member<'_>) -> io::Result<()> {
    let mut name = path.as_bytes().to_vec();
    if matches!(m, Member::Dir { .. }) && !name.ends_with(b"/") {
        name.push(b'/');
    }
    let long = name.len() > 100 && split_name(&name).0.is_empty();
    let link_long = matches!(&m, Member::Symlink { target } if target.len() > 100);
    if long {
        let mut data = name.clone();
        data.push(0);
        w.write_all(&header(
            b"././@LongLink",
            b'L',
            0o644,
            data.len() as u64,
            0,
            b"",
        ))?;
        w.write_all(&data)?;
        pad(w, data.len() as u64)?;
    }
    if let (true, Member::Symlink { target }) = (link_long, &m) {
        let mut data = target.as_bytes().to_vec();
        data.push(0);
        w.write_all(&header(
            b"././@LongLink",
            b'K',
            0o644,
            data.len() as u64,
            0,
            b"",
        ))?;
        w.write_all(&data)?;
        pad(w, data.len() as u64)?;
    }
    match m {
        Member::File { mode, data } => {
            w.write_all(&header(&name, b'0', mode, data.len() as u64, mtime, b""))?;
            w.write_all(data)?;
            pad(w, data.len() as u64)
        }
        Member::Dir { mode } => w.write_all(&header(&name, b'5', mode, 0, mtime, b"")),
        Member::Symlink { target } => {
            w.write_all(&header(&name, b'2', 0o777, 0, mtime, target.as_bytes()))
        }
    }
}

/// Ends the archive (two empty blocks).
pub fn finish(w: &mut impl Write) -> io::Result<()> {
    w.write_all(&[0u8; 1024])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_system_tar_reads_what_we_write() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("a.tar");
        let mut f = std::fs::File::create(&path).expect("create");
        let long = format!("{}/file.txt", "deep/".repeat(40));
        append(&mut f, "dir", 0, Member::Dir { mode: 0o755 }).expect("dir");
        append(
            &mut f,
            "dir/x.sh",
            1_700_000_000,
            Member::File {
                mode: 0o755,
                data: b"echo hi\n",
            },
        )
        .expect("file");
        append(
            &mut f,
            &long,
            0,
            Member::File {
                mode: 0o644,
                data: b"long",
            },
        )
        .expect("long");
        append(&mut f, "dir/link", 0, Member::Symlink { target: "x.sh" }).expect("link");
        finish(&mut f).expect("finish");
        drop(f);
        let out = dir.path().join("out");
        std::fs::create_dir(&out).expect("mkdir");
        let st = std::process::Command::new("tar")
            .arg("-xf")
            .arg(&path)
            .arg("-C")
            .arg(&out)
            .status()
            .expect("tar");
        assert!(st.success());
        assert_eq!(
            std::fs::read(out.join("dir/x.sh")).expect("x"),
            b"echo hi\n"
        );
        assert_eq!(std::fs::read(out.join(&long)).expect("long"), b"long");
        assert_eq!(
            std::fs::read_link(out.join("dir/link")).expect("link"),
            std::path::PathBuf::from("x.sh")
        );
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(out.join("dir/x.sh"))
            .expect("meta")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o755);
    }
}
