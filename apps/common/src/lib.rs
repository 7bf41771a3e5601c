//! Shared pieces of the ringkv example apps.
