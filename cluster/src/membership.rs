//! Membership table (STUB).
