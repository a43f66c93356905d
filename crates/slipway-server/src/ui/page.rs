//! What every page shares: who is looking ([`Viewer`], from the session cookie, or a
//! redirect to the sign-in page), the layout (top bar, project tabs, breadcrumbs, flash
//! message), HTML error pages, CSRF checks on forms, and redirects after a form.

use crate::app::AppState;
use crate::http::auth::{self, csrf_matches, AuthMethod, Caller};
use crate::http::error::ApiError;
use crate::ui::assets;
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use maud::{html, Markup, PreEscaped, DOCTYPE};
use slipway_db::{Action, Project, Role, User};

/// The cookie carrying a one-shot message to the next page (after a form's redirect).
pub const FLASH_COOKIE: &str = "slipway_flash";

/// The signed-in user looking at a page.
#[derive(Debug, Clone)]
pub struct Viewer {
    pub user: User,
    /// The session's CSRF token (forms carry it as `_csrf`); `None` when the request
    /// came with an API token, which cannot submit forms.
    pub csrf: Option<String>,
    session: Option<String>,
    /// The message the previous form left (shown once).
    pub flash: Option<Flash>,
}

/// A one-line message shown at the top of the next page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Flash {
    pub error: bool,
    pub text: String,
}

impl Viewer {
    fn from_caller(caller: Caller, flash: Option<Flash>) -> Viewer {
        let session = match caller.method {
            AuthMethod::Session { token } => Some(token),
            AuthMethod::Token { .. } => None,
        };
        Viewer {
            csrf: session.as_deref().map(auth::csrf_token),
            session,
            user: caller.user,
            flash,
        }
    }

    /// As the API's caller, for its helpers.
    pub fn caller(&self) -> Caller {
        Caller {
            user: self.user.clone(),
            method: match &self.session {
                Some(token) => AuthMethod::Session {
                    token: token.clone(),
                },
                None => AuthMethod::Token { write: false },
            },
        }
    }

    /// For the audit log.
    pub fn actor(&self) -> slipway_db::Actor {
        slipway_db::Actor::user(&self.user)
    }

    /// Checks a form's `_csrf` field: forms change things only with the session's token,
    /// so another site cannot make a signed-in browser act.
    pub fn check_csrf(&self, given: &str) -> Result<(), PageError> {
        match &self.session {
            Some(s) if csrf_matches(s, given) => Ok(()),
            _ => Err(PageError::new(
                StatusCode::FORBIDDEN,
                "Form expired",
                "The form did not carry this session's security token (it may be from an older \
                 session). Go back, reload the page and try again.",
            )),
        }
    }
}

/// What the viewer may do in one project: the role is read once per page.
#[derive(Debug, Clone, Copy)]
pub struct Access {
    pub role: Option<Role>,
    admin: bool,
    disabled: bool,
}

impl Access {
    pub fn can(&self, action: Action) -> bool {
        !self.disabled && (self.admin || self.role.is_some_and(|r| r.allows(action)))
    }
}

/// Reads the viewer's role in `project` and refuses (404, as the API does) a viewer who
/// may not see it.
pub async fn project_access(
    app: &AppState,
    viewer: &Viewer,
    project: &Project,
) -> Result<Access, PageError> {
    let role = app.store.member_role(project.id, viewer.user.id).await?;
    let access = Access {
        role,
        admin: viewer.user.is_admin,
        disabled: viewer.user.disabled,
    };
    if !access.can(Action::View) {
        return Err(PageError::not_found(format!(
            "There is no project {:?}, or you may not see it.",
            project.name
        )));
    }
    Ok(access)
}

/// [`project_access`] and a refusal (403) when the role does not allow `action`: the
/// check behind every form, whatever the page showed.
pub fn require(access: &Access, action: Action, what: &str) -> Result<(), PageError> {
    if access.can(action) {
        Ok(())
    } else {
        Err(PageError::new(
            StatusCode::FORBIDDEN,
            "Not allowed",
            format!("Your role in this project does not allow you to {what}."),
        ))
    }
}

/// The project named in a page's path and what the viewer may do in it (404 when they
/// may not see it): how every project page starts.
pub async fn open_project(
    app: &AppState,
    viewer: &Viewer,
    name: &str,
) -> Result<(Project, Access), PageError> {
    let project = find_project(app, name).await?;
    let access = project_access(app, viewer, &project).await?;
    Ok((project, access))
}

/// The project named in a page's path.
pub async fn find_project(app: &AppState, name: &str) -> Result<Project, PageError> {
    match app.store.project_by_name(name).await? {
        Some(p) => Ok(p),
        None => Err(PageError::not_found(format!(
            "There is no project {name:?}, or you may not see it."
        ))),
    }
}

fn read_flash(parts: &Parts) -> Option<Flash> {
    let raw = auth::cookie(&parts.headers, FLASH_COOKIE)?;
    let text: String = url_decode(raw.get(2..)?);
    let error = raw.starts_with("e:");
    (!text.is_empty()).then_some(Flash { error, text })
}

/// Percent-decoding for the flash cookie's value.
fn url_decode(s: &str) -> String {
    fn hex(b: u8) -> Option<u8> {
        (b as char).to_digit(16).map(|d| d as u8)
    }
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2])) {
                out.push(h * 16 + l);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Percent-encoding of everything but unreserved characters (cookie values, query
/// strings).
pub fn url_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A signed-in viewer; anyone else is sent to the sign-in page (and back afterwards).
pub struct SignedIn(pub Viewer);

impl FromRequestParts<AppState> for SignedIn {
    type Rejection = PageError;

    async fn from_request_parts(parts: &mut Parts, app: &AppState) -> Result<Self, PageError> {
        let next = parts
            .uri
            .path_and_query()
            .map(|p| p.as_str().to_string())
            .unwrap_or_else(|| "/".into());
        match auth::authenticate(app, &parts.headers).await {
            Ok(Some(caller)) => Ok(SignedIn(Viewer::from_caller(caller, read_flash(parts)))),
            Ok(None) => Err(PageError::SignIn {
                next,
                expired: false,
            }),
            Err(e) if e.status == StatusCode::UNAUTHORIZED => Err(PageError::SignIn {
                next,
                expired: true,
            }),
            Err(e) => Err(e.into()),
        }
    }
}

/// A viewer if signed in (the sign-in page).
pub struct MaybeSignedIn(pub Option<Viewer>);

impl FromRequestParts<AppState> for MaybeSignedIn {
    type Rejection = PageError;

    async fn from_request_parts(parts: &mut Parts, app: &AppState) -> Result<Self, PageError> {
        match auth::authenticate(app, &parts.headers).await {
            Ok(c) => Ok(MaybeSignedIn(
                c.map(|c| Viewer::from_caller(c, read_flash(parts))),
            )),
            // An ended session is just no session here.
            Err(e) if e.status == StatusCode::UNAUTHORIZED => Ok(MaybeSignedIn(None)),
            Err(e) => Err(e.into()),
        }
    }
}

/// A page that could not be shown, as HTML.
#[derive(Debug)]
pub enum PageError {
    /// Not signed in (or the session ended): to the sign-in page, then back to `next`.
    SignIn { next: String, expired: bool },
    Page {
        status: StatusCode,
        title: String,
        message: String,
    },
}

impl PageError {
    pub fn new(status: StatusCode, title: impl Into<String>, message: impl Into<String>) -> Self {
        PageError::Page {
            status,
            title: title.into(),
            message: message.into(),
        }
    }

    pub fn not_found(message: impl Into<String>) -> PageError {
        PageError::new(StatusCode::NOT_FOUND, "Not found", message)
    }
}

impl From<ApiError> for PageError {
    fn from(e: ApiError) -> PageError {
        let title = match e.status {
            StatusCode::NOT_FOUND => "Not found",
            StatusCode::FORBIDDEN => "Not allowed",
            StatusCode::CONFLICT => "Not possible now",
            StatusCode::UNPROCESSABLE_ENTITY | StatusCode::BAD_REQUEST => "Invalid request",
            s if s.is_server_error() => "Something went wrong",
            _ => "Error",
        };
        PageError::new(e.status, title, e.message)
    }
}

impl From<slipway_db::Error> for PageError {
    fn from(e: slipway_db::Error) -> PageError {
        ApiError::from(e).into()
    }
}

impl IntoResponse for PageError {
    fn into_response(self) -> Response {
        match self {
            PageError::SignIn { next, expired } => {
                let mut url = format!("/login?next={}", url_encode(&next));
                if expired {
                    url.push_str("&expired=1");
                }
                let mut r = redirect(&url);
                if expired {
                    // The cookie names a session that is gone.
                    if let Ok(v) = HeaderValue::from_str(&format!(
                        "{}=; Path=/; HttpOnly; SameSite=Lax; Max-Age=0",
                        auth::SESSION_COOKIE
                    )) {
                        r.headers_mut().append(header::SET_COOKIE, v);
                    }
                }
                r
            }
            PageError::Page {
                status,
                title,
                message,
            } => {
                let body = Layout::bare(&title).render(html! {
                    section.panel.error-page {
                        h1 { (title) }
                        p { (message) }
                        p { a href="/projects" { "Back to the projects" } }
                    }
                });
                (status, body).into_response()
            }
        }
    }
}

/// The page a form was sent from (its `Referer`, when it is a page of this server), so
/// a button pressed in a list brings the viewer back to that list; `default` otherwise.
pub fn back_to(headers: &axum::http::HeaderMap, default: &str) -> String {
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("");
    let path = headers
        .get(header::REFERER)
        .and_then(|r| r.to_str().ok())
        .and_then(|r| {
            let rest = r
                .strip_prefix("http://")
                .or_else(|| r.strip_prefix("https://"))?;
            let (h, p) = rest.split_once('/')?;
            (h == host && !host.is_empty()).then(|| format!("/{p}"))
        });
    match path {
        Some(p) if !p.starts_with("//") && !p.starts_with("/login") => p,
        _ => default.to_string(),
    }
}

/// 303 See Other to `to` (after a form).
pub fn redirect(to: &str) -> Response {
    let mut r = StatusCode::SEE_OTHER.into_response();
    if let Ok(v) = HeaderValue::from_str(to) {
        r.headers_mut().insert(header::LOCATION, v);
    }
    r
}

/// [`redirect`] with a message for the next page.
pub fn redirect_with(to: &str, flash: Flash) -> Response {
    let mut r = redirect(to);
    let value = format!(
        "{FLASH_COOKIE}={}{}; Path=/; HttpOnly; SameSite=Lax; Max-Age=60",
        if flash.error { "e:" } else { "i:" },
        url_encode(&flash.text)
    );
    if let Ok(v) = HeaderValue::from_str(&value) {
        r.headers_mut().append(header::SET_COOKIE, v);
    }
    r
}

pub fn notice(text: impl Into<String>) -> Flash {
    Flash {
        error: false,
        text: text.into(),
    }
}

pub fn problem(text: impl Into<String>) -> Flash {
    Flash {
        error: true,
        text: text.into(),
    }
}

/// The tabs of a project's pages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProjectTab {
    Overview,
    Pipelines,
    /// Environments, what runs where, deployment history, approve/reject and rollback.
    Environments,
}

impl ProjectTab {
    pub const ALL: [ProjectTab; 3] = [
        ProjectTab::Overview,
        ProjectTab::Pipelines,
        ProjectTab::Environments,
    ];

    fn label(self) -> &'static str {
        match self {
            ProjectTab::Overview => "Overview",
            ProjectTab::Pipelines => "Pipelines",
            ProjectTab::Environments => "Environments",
        }
    }

    fn href(self, project: &str) -> String {
        match self {
            ProjectTab::Overview => format!("/projects/{project}"),
            ProjectTab::Pipelines => format!("/projects/{project}/pipelines"),
            ProjectTab::Environments => format!("/projects/{project}/environments"),
        }
    }
}

/// A page under construction: title, breadcrumbs, the project tab bar.
pub struct Layout<'a> {
    title: String,
    viewer: Option<&'a Viewer>,
    crumbs: Vec<(String, Option<String>)>,
    project: Option<(&'a str, ProjectTab)>,
    /// Pages that follow live changes name what they watch (`pipeline:12`, `project:3`);
    /// the script reloads their `data-live` regions when it changes.
    watch: Option<String>,
}

impl<'a> Layout<'a> {
    pub fn new(title: impl Into<String>, viewer: &'a Viewer) -> Layout<'a> {
        Layout {
            title: title.into(),
            viewer: Some(viewer),
            crumbs: Vec::new(),
            project: None,
            watch: None,
        }
    }

    /// A page without a signed-in user (sign-in, errors).
    pub fn bare(title: &str) -> Layout<'a> {
        Layout {
            title: title.to_string(),
            viewer: None,
            crumbs: Vec::new(),
            project: None,
            watch: None,
        }
    }

    pub fn crumb(mut self, label: impl Into<String>, href: Option<String>) -> Self {
        self.crumbs.push((label.into(), href));
        self
    }

    /// Inside project `name`, on `tab`: adds its breadcrumbs and tab bar.
    pub fn project(mut self, name: &'a str, tab: ProjectTab) -> Self {
        self.crumbs
            .push(("Projects".into(), Some("/projects".into())));
        self.crumbs
            .push((name.to_string(), Some(format!("/projects/{name}"))));
        self.project = Some((name, tab));
        self
    }

    pub fn watch(mut self, what: String) -> Self {
        self.watch = Some(what);
        self
    }

    /// The whole document around `main`.
    pub fn render(self, main: Markup) -> Response {
        let flash = self.viewer.and_then(|v| v.flash.clone());
        let doc = html! {
            (DOCTYPE)
            html lang="en" {
                head {
                    meta charset="utf-8";
                    meta name="viewport" content="width=device-width, initial-scale=1";
                    title { (self.title) " · Slipway" }
                    link rel="icon" href=(assets::FAVICON);
                    link rel="stylesheet" href=(assets::css_url());
                    script defer src=(assets::js_url()) {}
                }
                body data-watch=[self.watch.as_deref()] {
                    a.skip href="#main" { "Skip to content" }
                    header.top {
                        a.brand href="/" aria-label="Slipway home" {
                            (PreEscaped(assets::LOGO_SVG)) span { "Slipway" }
                        }
                        @if let Some(v) = self.viewer {
                            nav.main-nav aria-label="Main" {
                                // Every page is under a project so far; issue 5's
                                // instance-wide pages (environments) add entries here.
                                a href="/projects" aria-current=[self.project.is_none().then_some("page")] { "Projects" }
                            }
                            div.who {
                                span.username title="Signed in" { (v.user.username) }
                                @if v.user.is_admin { span.tag { "admin" } }
                                @if let Some(csrf) = &v.csrf {
                                    form method="post" action="/logout" {
                                        input type="hidden" name="_csrf" value=(csrf);
                                        button.link type="submit" { "Sign out" }
                                    }
                                }
                            }
                        }
                    }
                    div.page {
                        @if !self.crumbs.is_empty() {
                            nav.crumbs aria-label="Breadcrumb" {
                                ol {
                                    @for (i, (label, href)) in self.crumbs.iter().enumerate() {
                                        li {
                                            @match href {
                                                Some(h) if i + 1 < self.crumbs.len() => a href=(h) { (label) },
                                                _ => span aria-current="page" { (label) },
                                            }
                                        }
                                    }
                                }
                            }
                        }
                        @if let Some((name, tab)) = self.project {
                            nav.tabs aria-label="Project" {
                                @for t in ProjectTab::ALL {
                                    a href=(t.href(name)) aria-current=[(t == tab).then_some("page")] { (t.label()) }
                                }
                            }
                        }
                        @if let Some(f) = &flash {
                            div.flash.error[f.error] role=(if f.error { "alert" } else { "status" }) { (f.text) }
                        }
                        main #main { (main) }
                    }
                }
            }
        };
        let mut r = (
            [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
            doc.into_string(),
        )
            .into_response();
        protect(&mut r);
        if flash.is_some() {
            if let Ok(v) = HeaderValue::from_str(&format!(
                "{FLASH_COOKIE}=; Path=/; HttpOnly; SameSite=Lax; Max-Age=0"
            )) {
                r.headers_mut().append(header::SET_COOKIE, v);
            }
        }
        r
    }
}

/// The headers every page carries: no caching of pages with user data, no framing (the
/// buttons cannot be clickjacked), scripts only from this server, forms only to it, the
/// referrer only to it (the action forms use it to come back).
pub fn protect(r: &mut Response) {
    let h = r.headers_mut();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; \
             script-src 'self'; connect-src 'self'; frame-ancestors 'none'; form-action 'self'; \
             base-uri 'none'",
        ),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
}

/// A hidden `_csrf` field for a form.
pub fn csrf_field(viewer: &Viewer) -> Markup {
    html! { input type="hidden" name="_csrf" value=(viewer.csrf.as_deref().unwrap_or("")); }
}

/// A one-button form posting to `action` whose button shows only a glyph; `label` is
/// its accessible name and tooltip.
pub fn icon_button(viewer: &Viewer, action: &str, glyph: &str, label: &str, class: &str) -> Markup {
    html! {
        form.inline method="post" action=(action) {
            (csrf_field(viewer))
            button type="submit" class=(format!("btn {class}")) aria-label=(label) title=(label) { (glyph) }
        }
    }
}

/// A one-button form posting to `action` (play, retry, cancel...).
pub fn action_button(viewer: &Viewer, action: &str, label: &str, class: &str) -> Markup {
    html! {
        form.inline method="post" action=(action) {
            (csrf_field(viewer))
            button type="submit" class=(format!("btn {class}")) { (label) }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn back_to_stays_on_this_server() {
        let mut h = axum::http::HeaderMap::new();
        h.insert(header::HOST, HeaderValue::from_static("ci.example:8080"));
        assert_eq!(back_to(&h, "/d"), "/d");
        h.insert(
            header::REFERER,
            HeaderValue::from_static("http://ci.example:8080/projects/app/pipelines/3?x=1"),
        );
        assert_eq!(back_to(&h, "/d"), "/projects/app/pipelines/3?x=1");
        h.insert(
            header::REFERER,
            HeaderValue::from_static("http://evil.example/projects"),
        );
        assert_eq!(back_to(&h, "/d"), "/d");
        h.insert(
            header::REFERER,
            HeaderValue::from_static("http://ci.example:8080//evil.example"),
        );
        assert_eq!(back_to(&h, "/d"), "/d");
    }

    #[test]
    fn flash_round_trip_through_percent_encoding() {
        let text = "Job \"deploy\" played; 100% → ok";
        assert_eq!(url_decode(&url_encode(text)), text);
        assert_eq!(url_decode("a%2"), "a%2");
        assert_eq!(url_decode("%zz"), "%zz");
    }
}
