fn main() {
    // glibc dlopens "libnss_broker.so.2"; the SONAME must say the same.
    println!("cargo:rustc-cdylib-link-arg=-Wl,-soname,libnss_broker.so.2");
}
