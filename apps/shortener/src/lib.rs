//! URL shortener on ringkv: `POST /api/v1/data/shorten` returns a short
//! code (base62 of a snowflake id), `GET /{code}` redirects to the long URL,
//! and `GET /api/v1/stats/{code}` returns the click count. The key layout
//! and sibling resolution are described in [`store`].

pub mod base62;
pub mod clicks;
pub mod http;
pub mod store;
