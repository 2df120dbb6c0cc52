//! The protobuf text format of `.prototxt` files, parsed and printed by
//! prost-reflect against the descriptor compiled from `proto/caffe.proto`.
use crate::error::{Error, IoContext, Result};
use prost_reflect::{DescriptorPool, DynamicMessage};
use std::path::Path;
use std::sync::LazyLock;

static POOL: LazyLock<DescriptorPool> = LazyLock::new(|| {
    DescriptorPool::decode(
        include_bytes!(concat!(env!("OUT_DIR"), "/caffe_descriptor.bin")).as_ref(),
    )
    .expect("the descriptor embedded at build time is valid")
});

/// Parses protobuf text `text` (from `path`, used in errors) as message `T`.
///
/// Unknown fields, bad enum names and syntax errors are reported with the
/// file, line and column of the offending token.
pub fn parse<T: prost::Message + prost::Name + Default>(text: &str, path: &Path) -> Result<T> {
    let name = T::full_name();
    let desc = POOL
        .get_message_by_name(&name)
        .unwrap_or_else(|| panic!("{name} is in the embedded descriptor"));
    let dynamic = DynamicMessage::parse_text_format(desc, text).map_err(|e| {
        let offset = miette::Diagnostic::labels(&e)
            .and_then(|mut labels| labels.next())
            .map(|l| l.offset())
            .unwrap_or(text.len());
        let (line, column) = line_column(text, offset);
        Error::Prototxt {
            path: path.to_path_buf(),
            line,
            column,
            message: e.to_string(),
        }
    })?;
    dynamic.transcode_to::<T>().map_err(|e| Error::Prototxt {
        path: path.to_path_buf(),
        line: 0,
        column: 0,
        message: e.to_string(),
    })
}

/// Reads and parses the `.prototxt` file at `path`.
pub fn read<T: prost::Message + prost::Name + Default>(path: &Path) -> Result<T> {
    let text = std::fs::read_to_string(path).at(path)?;
    parse(&text, path)
}

/// Prints `msg` in the protobuf text format, one field per line.
pub fn to_string<T: prost::Message + prost::Name>(msg: &T) -> String {
    let desc = POOL
        .get_message_by_name(&T::full_name())
        .expect("message is in the embedded descriptor");
    let mut dynamic = DynamicMessage::new(desc);
    dynamic
        .transcode_from(msg)
        .expect("a prost message transcodes to its own descriptor");
    let options = prost_reflect::text_format::FormatOptions::new().pretty(true);
    dynamic.to_text_format_with_options(&options)
}

/// 1-based line and column of byte `offset` in `text`.
fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
    (line, column)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::caffe::{NetParameter, SolverParameter};

    #[test]
    fn unknown_field_names_line_and_field() {
        let text = "name: \"x\"\nlayer {\n  name: \"a\"\n  bogus_field: 3\n}\n";
        let err = parse::<NetParameter>(text, Path::new("net.prototxt")).unwrap_err();
        let msg = err.to_string();
        assert!(msg.starts_with("net.prototxt:4:3:"), "{msg}");
        assert!(msg.contains("bogus_field"), "{msg}");
    }

    #[test]
    fn parses_enums_and_defaults() {
        let text = "base_lr: 0.001\nlr_policy: \"step\"\nsolver_mode: CPU\nstepsize: 20000";
        let s: SolverParameter = parse(text, Path::new("s.prototxt")).unwrap();
        assert_eq!(s.base_lr(), 0.001);
        assert_eq!(s.stepsize(), 20000);
        assert_eq!(
            s.solver_mode(),
            crate::caffe::proto::solver_parameter::SolverMode::Cpu
        );
        assert_eq!(s.momentum(), 0.0);
        assert_eq!(s.r#type(), "SGD");
    }

    #[test]
    fn print_then_parse_round_trips() {
        let text = "name: \"n\"\nlayer { name: \"c\" type: \"Convolution\" convolution_param { num_output: 4 kernel_size: 3 } }";
        let net: NetParameter = parse(text, Path::new("n")).unwrap();
        let printed = to_string(&net);
        let again: NetParameter = parse(&printed, Path::new("n")).unwrap();
        assert_eq!(net, again);
    }

    #[test]
    fn line_column_counts_from_one() {
        assert_eq!(line_column("ab\ncd", 4), (2, 2));
        assert_eq!(line_column("ab", 0), (1, 1));
    }
}
