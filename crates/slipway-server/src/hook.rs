//! The `post-receive` hook: how a repository on this machine tells the server about a
//! push at once, instead of waiting for the next poll.
//!
//! [`script`] writes a POSIX `sh` hook that sends git's `OLD NEW REF` lines (and any
//! `git push -o` options) in one HTTP POST to the server's local endpoint, with the
//! project's hook token as a bearer token. It uses `curl`, else `wget`, else bash's
//! `/dev/tcp`, so it works on a bare Debian. The push never fails because of it: git has
//! already updated the refs when `post-receive` runs, and the hook exits 0 and says on
//! standard error (shown to the pusher as `remote: ...`) when the server could not be told,
//! so the pusher knows the pipeline will wait for the next poll.
//!
//! [`install`] writes it into a repository (bare or not, honouring `core.hooksPath`),
//! idempotently; a `post-receive` hook that was already there is kept as
//! `post-receive.chained` and runs after ours with the same input and arguments.
//!
//! On the server, [`parse_notification`] reads the request body and [`token_matches`]
//! checks the token in constant time.

use crate::git::{query, GitError, RefUpdate};
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// The first lines of every hook Slipway writes; how [`install`] recognises its own.
pub const MARKER: &str = "# slipway-post-receive-hook";

/// The name an existing hook is moved to when Slipway's is installed in its place.
pub const CHAINED: &str = "post-receive.chained";

/// Where the hook sends pushes and how it proves which project it speaks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HookTarget {
    /// The full endpoint URL, e.g. `http://127.0.0.1:8080/api/v1/projects/3/hook`.
    pub url: String,
    /// The project's hook token (sent as `Authorization: Bearer TOKEN`).
    pub token: String,
}

/// What a hook reported: the refs one push changed and its push options.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct HookNotification {
    pub updates: Vec<RefUpdate>,
    /// `git push -o OPTION` values, such as `ci.skip` or `ci.variable=KEY=VALUE`.
    pub push_options: Vec<String>,
}

/// Why a hook could not be installed.
#[derive(Debug)]
pub enum HookError {
    /// The target URL or token cannot be written into a hook safely.
    Invalid(String),
    /// `path` is not a git repository.
    NotARepository(PathBuf),
    Git(GitError),
    Io {
        context: String,
        error: std::io::Error,
    },
}

impl std::fmt::Display for HookError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HookError::Invalid(m) => f.write_str(m),
            HookError::NotARepository(p) => write!(f, "{}: not a git repository", p.display()),
            HookError::Git(e) => e.fmt(f),
            HookError::Io { context, error } => write!(f, "{context}: {error}"),
        }
    }
}

impl std::error::Error for HookError {}

fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

impl HookTarget {
    fn check(&self) -> Result<(), HookError> {
        let ok_url = (self.url.starts_with("http://") || self.url.starts_with("https://"))
            && self.url.len() > "http://".len()
            && !self
                .url
                .chars()
                .any(|c| c.is_control() || c.is_whitespace());
        if !ok_url {
            return Err(HookError::Invalid(format!(
                "{:?}: the hook URL must be an http:// or https:// URL without spaces",
                self.url
            )));
        }
        if self.token.is_empty()
            || !self
                .token
                .chars()
                .all(|c| c.is_ascii_graphic() && c != '\'' && c != '\\')
        {
            return Err(HookError::Invalid(
                "the hook token must be printable ASCII without quotes or backslashes".into(),
            ));
        }
        Ok(())
    }
}

/// The hook script for `target`.
pub fn script(target: &HookTarget) -> Result<String, HookError> {
    target.check()?;
    Ok(format!(
        r#"#!/bin/sh
{MARKER}
# Tells the Slipway server about each pushed ref so its pipeline starts at once.
# Written by `slipway hook install`; installing again replaces this file. A hook that was
# here before runs after this one as {CHAINED}. The push never fails because of this hook.
SLIPWAY_URL={url}
SLIPWAY_TOKEN={token}
LC_ALL=C
export LC_ALL

input=$(cat)
body="$input
"
i=0
while [ "$i" -lt "${{GIT_PUSH_OPTION_COUNT:-0}}" ]; do
    eval "opt=\${{GIT_PUSH_OPTION_$i}}"
    body="${{body}}option $opt
"
    i=$((i + 1))
done

slipway_curl() {{
    printf '%s' "$body" | curl -fsS --connect-timeout 2 --max-time 10 \
        -H "Authorization: Bearer $SLIPWAY_TOKEN" -H 'Content-Type: text/plain' \
        --data-binary @- -o /dev/null "$SLIPWAY_URL" 2>&1
}}

# The body goes through a file (wget) or a pipe (bash), never the command line, which
# holds at most 128 KiB per argument: a push of thousands of tags must still get through.
slipway_wget() {{
    tmp=$(mktemp) || {{ echo "cannot create a temporary file"; return 1; }}
    printf '%s' "$body" > "$tmp"
    wget -q -T 10 -t 1 -O /dev/null --header="Authorization: Bearer $SLIPWAY_TOKEN" \
        --header='Content-Type: text/plain' --post-file="$tmp" "$SLIPWAY_URL" 2>&1
    status=$?
    rm -f "$tmp"
    [ "$status" -eq 0 ] || {{ echo "wget failed (exit status $status)"; return 1; }}
}}

# Plain HTTP with bash's /dev/tcp, for machines with neither curl nor wget.
slipway_bash() {{
    case "$SLIPWAY_URL" in
        http://*) ;;
        *) echo "neither curl nor wget is installed (needed for https)"; return 1 ;;
    esac
    command -v bash >/dev/null 2>&1 || {{ echo "neither curl, wget nor bash is installed"; return 1; }}
    rest=${{SLIPWAY_URL#http://}}
    hostport=${{rest%%/*}}
    path=/${{rest#*/}}
    [ "$hostport" = "$rest" ] && path=/
    host=${{hostport%:*}}
    port=${{hostport##*:}}
    [ "$port" = "$hostport" ] && port=80
    printf '%s' "$body" | \
    SLIPWAY_HOST=$host SLIPWAY_PORT=$port SLIPWAY_PATH=$path SLIPWAY_HOSTPORT=$hostport \
    SLIPWAY_TOKEN=$SLIPWAY_TOKEN timeout 10 bash -c '
        body=$(cat; echo x)
        body=${{body%x}}
        exec 3<>"/dev/tcp/$SLIPWAY_HOST/$SLIPWAY_PORT" || exit 1
        printf "POST %s HTTP/1.0\r\nHost: %s\r\nAuthorization: Bearer %s\r\nContent-Type: text/plain\r\nContent-Length: %s\r\nConnection: close\r\n\r\n%s" \
            "$SLIPWAY_PATH" "$SLIPWAY_HOSTPORT" "$SLIPWAY_TOKEN" "${{#body}}" "$body" >&3
        IFS=" " read -r _ status _ <&3
        case "$status" in
            2??) exit 0 ;;
            *) echo "HTTP status ${{status:-none}}"; exit 1 ;;
        esac' 2>&1
}}

client=${{SLIPWAY_HOOK_CLIENT:-}}
if [ -z "$client" ]; then
    if command -v curl >/dev/null 2>&1; then client=curl
    elif command -v wget >/dev/null 2>&1; then client=wget
    else client=bash
    fi
fi
if ! why=$(slipway_$client); then
    echo "slipway: could not notify the server at $SLIPWAY_URL: $why" >&2
    echo "slipway: the push is kept; its pipeline starts when the server next polls this repository" >&2
fi

chained="$(dirname "$0")/{CHAINED}"
if [ -x "$chained" ]; then
    printf '%s\n' "$input" | "$chained" "$@"
    exit $?
fi
exit 0
"#,
        url = sh_quote(&target.url),
        token = sh_quote(&target.token),
    ))
}

/// What [`install`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Installed {
    /// The hook file written.
    pub path: PathBuf,
    /// Where an existing, foreign hook was moved (first install only).
    pub chained: Option<PathBuf>,
}

/// Installs the hook into the repository at `repo` (a bare repository or a working tree).
/// Idempotent: installing again rewrites Slipway's hook (with a new URL or token) and
/// leaves the chained hook alone. A foreign `post-receive` is moved to
/// [`CHAINED`] and runs after Slipway's; if both a foreign hook and a chained one exist,
/// nothing is changed and an error says so. The hook is written to a temporary file and
/// renamed into place, so a push never sees half a hook. It is readable by its owner only
/// (it holds the token).
pub fn install(repo: &Path, target: &HookTarget) -> Result<Installed, HookError> {
    let text = script(target)?;
    let hooks = hooks_dir(repo)?;
    std::fs::create_dir_all(&hooks).map_err(|e| HookError::Io {
        context: format!("creating {}", hooks.display()),
        error: e,
    })?;
    let path = hooks.join("post-receive");
    let chained_path = hooks.join(CHAINED);
    let mut chained = None;
    if let Some(existing) = read_if_exists(&path)? {
        if !is_ours(&existing) {
            if chained_path.exists() {
                return Err(HookError::Invalid(format!(
                    "{} is not Slipway's hook and {} already exists: merge them by hand, then \
                     install again",
                    path.display(),
                    chained_path.display()
                )));
            }
            std::fs::rename(&path, &chained_path).map_err(|e| HookError::Io {
                context: format!("moving {} aside", path.display()),
                error: e,
            })?;
            chained = Some(chained_path);
        }
    }
    let tmp = hooks.join(format!(".post-receive.slipway-{}", std::process::id()));
    let write = || -> std::io::Result<()> {
        std::fs::write(&tmp, text.as_bytes())?;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o700))?;
        std::fs::rename(&tmp, &path)
    };
    if let Err(e) = write() {
        let _ = std::fs::remove_file(&tmp);
        return Err(HookError::Io {
            context: format!("writing {}", path.display()),
            error: e,
        });
    }
    Ok(Installed { path, chained })
}

/// Removes Slipway's hook and puts the chained one (if any) back in its place. Does
/// nothing when the installed hook is not Slipway's.
pub fn uninstall(repo: &Path) -> Result<bool, HookError> {
    let hooks = hooks_dir(repo)?;
    let path = hooks.join("post-receive");
    match read_if_exists(&path)? {
        Some(t) if is_ours(&t) => {}
        _ => return Ok(false),
    }
    let io = |context: String| move |error| HookError::Io { context, error };
    let chained = hooks.join(CHAINED);
    if chained.exists() {
        std::fs::rename(&chained, &path).map_err(io(format!("restoring {}", chained.display())))?;
    } else {
        std::fs::remove_file(&path).map_err(io(format!("removing {}", path.display())))?;
    }
    Ok(true)
}

fn is_ours(text: &str) -> bool {
    text.lines().take(3).any(|l| l.trim() == MARKER)
}

fn read_if_exists(path: &Path) -> Result<Option<String>, HookError> {
    let mut f = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(HookError::Io {
                context: format!("reading {}", path.display()),
                error: e,
            })
        }
    };
    let mut bytes = Vec::new();
    f.read_to_end(&mut bytes).map_err(|e| HookError::Io {
        context: format!("reading {}", path.display()),
        error: e,
    })?;
    Ok(Some(String::from_utf8_lossy(&bytes).into_owned()))
}

/// The repository's hooks directory as git resolves it (`core.hooksPath` included).
pub fn hooks_dir(repo: &Path) -> Result<PathBuf, HookError> {
    let git_path = query(
        repo,
        &["rev-parse", "--path-format=absolute", "--git-path", "hooks"],
    )
    .ok_or_else(|| HookError::NotARepository(repo.to_path_buf()))?;
    Ok(PathBuf::from(git_path))
}

/// Reads a hook's request body: one `OLD NEW REF` line per pushed ref, then
/// `option VALUE` lines for push options. Blank lines are ignored; any other line is an
/// error naming its line number, and nothing is returned for a body with errors.
pub fn parse_notification(body: &str) -> Result<HookNotification, String> {
    let mut n = HookNotification::default();
    for (i, line) in body.lines().enumerate() {
        let line = line.trim_end_matches('\r');
        if line.trim().is_empty() {
            continue;
        }
        if let Some(opt) = line.strip_prefix("option ") {
            n.push_options.push(opt.to_string());
            continue;
        }
        let mut parts = line.split(' ');
        match (parts.next(), parts.next(), parts.next(), parts.next()) {
            (Some(old), Some(new), Some(name), None) => {
                let u = RefUpdate::from_shas(old, new, name)
                    .map_err(|e| format!("line {}: {e}", i + 1))?;
                n.updates.push(u);
            }
            _ => return Err(format!("line {}: expected `OLD NEW REF`", i + 1)),
        }
    }
    Ok(n)
}

/// Whether the `Authorization` header value carries `expected` as a bearer token,
/// compared in constant time.
pub fn token_matches(authorization: Option<&str>, expected: &str) -> bool {
    let Some(given) = authorization.and_then(|h| h.strip_prefix("Bearer ")) else {
        return false;
    };
    crate::webhook::constant_time_eq(given.trim().as_bytes(), expected.as_bytes())
}

/// A new random hook token: 32 bytes from the operating system, hex-encoded.
pub fn new_token() -> std::io::Result<String> {
    let mut bytes = [0u8; 32];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::git::{RefChangeKind, ZERO_SHA};

    #[test]
    fn bodies_parse_with_positions() {
        let a = "a".repeat(40);
        let body = format!(
            "{ZERO_SHA} {a} refs/heads/main\n\n{a} {ZERO_SHA} refs/tags/v1\noption ci.skip\n"
        );
        let n = parse_notification(&body).expect("ok");
        assert_eq!(n.updates.len(), 2);
        assert_eq!(n.updates[0].kind(), RefChangeKind::Created);
        assert_eq!(n.updates[1].kind(), RefChangeKind::Deleted);
        assert_eq!(n.push_options, vec!["ci.skip"]);
        let err = parse_notification(&format!("{a} {a} refs/heads/x\nhello\n")).expect_err("bad");
        assert_eq!(err, "line 2: expected `OLD NEW REF`");
    }

    #[test]
    fn tokens_and_targets() {
        assert!(token_matches(Some("Bearer abc"), "abc"));
        assert!(!token_matches(Some("Bearer abd"), "abc"));
        assert!(!token_matches(Some("abc"), "abc"));
        assert!(!token_matches(None, "abc"));
        let t = new_token().expect("token");
        assert_eq!(t.len(), 64);
        assert_ne!(t, new_token().expect("token"));
        let bad = HookTarget {
            url: "http://x/\nrm -rf /".into(),
            token: "t".into(),
        };
        assert!(script(&bad).is_err());
        let bad = HookTarget {
            url: "http://x/".into(),
            token: "it's".into(),
        };
        assert!(script(&bad).is_err());
        let s = script(&HookTarget {
            url: "http://127.0.0.1:1/h".into(),
            token: t.clone(),
        })
        .expect("script");
        assert!(s.starts_with("#!/bin/sh\n# slipway-post-receive-hook\n"));
        assert!(s.contains(&format!("SLIPWAY_TOKEN='{t}'")));
    }
}
