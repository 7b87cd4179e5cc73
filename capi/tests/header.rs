//! The committed C header equals the one cbindgen generates from the
//! current source (build.rs writes it to OUT_DIR), so it never goes stale.
//! `MEMSTREAMER_BLESS=1 cargo test -p memstreamer-capi --test header`
//! rewrites the committed copy.

const GENERATED: &str = include_str!(concat!(env!("OUT_DIR"), "/memstreamer.h"));

#[test]
fn committed_header_is_the_generated_one() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("include/memstreamer.h");
    if std::env::var_os("MEMSTREAMER_BLESS").is_some() {
        std::fs::write(&path, GENERATED).expect("write include/memstreamer.h");
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == GENERATED,
        "capi/include/memstreamer.h is stale: run MEMSTREAMER_BLESS=1 cargo test -p memstreamer-capi --test header and commit it"
    );
}
