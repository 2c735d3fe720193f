//! Detection fidelity (to be written).
