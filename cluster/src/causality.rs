//! Coordinator and replica rules for dots (STUB).
