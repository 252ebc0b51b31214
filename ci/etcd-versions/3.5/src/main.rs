//! Prints where the vendored etcd binary of this crate's version is.
fn main() {
    match etcd_bin_vendored_linux_amd64::etcd_bin_path() {
        Ok(path) => println!("{}", path.display()),
        Err(never) => match never {},
    }
}
