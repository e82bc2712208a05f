//! The dashboard's two static assets, compiled into the binary.

use axum::http::header;
use axum::response::IntoResponse;

pub(crate) const APP_JS: &str = include_str!("assets/app.js");
pub(crate) const STYLE_CSS: &str = include_str!("assets/style.css");

pub(crate) async fn app_js() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (header::CACHE_CONTROL, "public, max-age=300"),
        ],
        APP_JS,
    )
}

pub(crate) async fn style_css() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/css; charset=utf-8"),
            (header::CACHE_CONTROL, "public, max-age=300"),
        ],
        STYLE_CSS,
    )
}
