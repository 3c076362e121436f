// The argument is the name build.rs gave `Model::emit`, a string.
mod big {
    qbake::include_model!(big);
}

fn main() {}
