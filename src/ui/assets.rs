//! The page's files, embedded in the binary (no internet, no CDN, nothing
//! to install beside `weft`).

/// `/`: the page's structure; everything in it is filled in by `app.js`.
pub const INDEX_HTML: &str = include_str!("assets/index.html");
/// `/app.js`: reads `/api/events` and draws the snapshot.
pub const APP_JS: &str = include_str!("assets/app.js");
/// `/app.css`: light and dark (prefers-color-scheme).
pub const APP_CSS: &str = include_str!("assets/app.css");
