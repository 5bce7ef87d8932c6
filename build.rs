//! Build script: exposes PyO3's interpreter-version cfgs (`Py_3_13`, `Py_GIL_DISABLED`, ...)
//! to this crate, so module slots match the interpreter being built for.
fn main() {
    pyo3_build_config::use_pyo3_cfgs();
}
