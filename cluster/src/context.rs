//! Client context (STUB).
