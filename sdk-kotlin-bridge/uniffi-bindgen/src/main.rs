//! `uniffi-bindgen`: generates the Kotlin and Swift bindings from the built
//! bridge library (library mode), with exactly the UniFFI version the bridge uses.

fn main() {
    uniffi::uniffi_bindgen_main()
}
