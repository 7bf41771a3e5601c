//! Phi-accrual failure detector (STUB).
