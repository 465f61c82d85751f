//! Programs that embed Switchyard crates live in `examples/`; see each file.
