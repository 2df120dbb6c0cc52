//! The protobuf text format of `.prototxt` files, parsed and printed by
//! prost-reflect against the descriptor compiled from `proto/caffe.proto`.
use crate::error::{Error, IoContext, Result};
use prost_reflect::{DescriptorPool, DynamicMessage, FieldDescriptor, Value};
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

/// Prints `msg` in the protobuf text format as Caffe's own files are laid
/// out: one field per line, a repeated field as one line per element and a
/// message as `name { ... }`. (The short list form `layer: [{...}]` is not
/// used: protobuf 2.x, which older Caffe builds link, cannot read it.)
pub fn to_string<T: prost::Message + prost::Name>(msg: &T) -> String {
    let desc = POOL
        .get_message_by_name(&T::full_name())
        .expect("message is in the embedded descriptor");
    let mut dynamic = DynamicMessage::new(desc);
    dynamic
        .transcode_from(msg)
        .expect("a prost message transcodes to its own descriptor");
    let mut out = String::new();
    write_message(&dynamic, 0, &mut out);
    out
}

/// Appends the set fields of `msg`, indented by `indent` spaces.
fn write_message(msg: &DynamicMessage, indent: usize, out: &mut String) {
    for (field, value) in msg.fields() {
        match value {
            Value::List(items) => {
                for v in items {
                    write_field(&field, v, indent, out);
                }
            }
            v => write_field(&field, v, indent, out),
        }
    }
}

/// Appends one `name: value` line, or a `name { ... }` block.
fn write_field(field: &FieldDescriptor, value: &Value, indent: usize, out: &mut String) {
    let pad = " ".repeat(indent);
    let name = field.name();
    let scalar = match value {
        Value::Message(m) => {
            out.push_str(&format!("{pad}{name} {{\n"));
            write_message(m, indent + 2, out);
            out.push_str(&format!("{pad}}}\n"));
            return;
        }
        Value::Bool(v) => v.to_string(),
        Value::I32(v) => v.to_string(),
        Value::I64(v) => v.to_string(),
        Value::U32(v) => v.to_string(),
        Value::U64(v) => v.to_string(),
        Value::F32(v) => float(f64::from(*v), v.to_string()),
        Value::F64(v) => float(*v, v.to_string()),
        Value::String(v) => quote(v.as_bytes()),
        Value::Bytes(v) => quote(v),
        Value::EnumNumber(n) => match field.kind().as_enum().and_then(|e| e.get_value(*n)) {
            Some(v) => v.name().to_string(),
            None => n.to_string(),
        },
        // caffe.proto has no maps; lists are split by write_message.
        Value::Map(_) | Value::List(_) => unreachable!("no map or nested list fields"),
    };
    out.push_str(&format!("{pad}{name}: {scalar}\n"));
}

/// A float as the text format spells it: Rust's shortest round-trip digits,
/// `inf`, `-inf` or `nan`.
fn float(v: f64, digits: String) -> String {
    if v.is_nan() {
        "nan".into()
    } else if v.is_infinite() {
        if v > 0.0 { "inf" } else { "-inf" }.into()
    } else {
        digits
    }
}

/// A double-quoted string with C escapes (non-ASCII bytes as octal, as
/// protobuf's own printer writes them).
fn quote(bytes: &[u8]) -> String {
    let mut s = String::from("\"");
    for &b in bytes {
        match b {
            b'"' => s.push_str("\\\""),
            b'\\' => s.push_str("\\\\"),
            b'\n' => s.push_str("\\n"),
            b'\r' => s.push_str("\\r"),
            b'\t' => s.push_str("\\t"),
            0x20..=0x7e => s.push(b as char),
            _ => s.push_str(&format!("\\{b:03o}")),
        }
    }
    s.push('"');
    s
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
    fn prints_as_caffe_lays_out_its_files() {
        let text = "name: \"n\"\nlayer { name: \"c\" type: \"Convolution\" top: \"c\" top: \"d\" \
                    param { lr_mult: 1 } param { lr_mult: 2 decay_mult: 0 } \
                    convolution_param { num_output: 4 kernel_size: 3 weight_filler { type: \"gaussian\" std: 0.01 } } }\n\
                    layer { name: \"p\" type: \"Pooling\" pooling_param { pool: AVE } }";
        let net: NetParameter = parse(text, Path::new("n")).unwrap();
        assert_eq!(
            to_string(&net),
            "name: \"n\"\n\
             layer {\n  name: \"c\"\n  type: \"Convolution\"\n  top: \"c\"\n  top: \"d\"\n\
             \x20 param {\n    lr_mult: 1\n  }\n  param {\n    lr_mult: 2\n    decay_mult: 0\n  }\n\
             \x20 convolution_param {\n    num_output: 4\n    kernel_size: 3\n\
             \x20   weight_filler {\n      type: \"gaussian\"\n      std: 0.01\n    }\n  }\n}\n\
             layer {\n  name: \"p\"\n  type: \"Pooling\"\n  pooling_param {\n    pool: AVE\n  }\n}\n"
        );
    }

    #[test]
    fn caffes_own_files_and_odd_strings_round_trip() {
        let shared = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/caffe-ref");
        for f in [
            "models/finetune_flickr_style/train_val.prototxt",
            "models/finetune_flickr_style/deploy.prototxt",
            "models/bvlc_reference_caffenet/train_val.prototxt",
            "fixtures/tiny-net/train_val.prototxt",
        ] {
            let net: NetParameter = read(&shared.join(f)).unwrap();
            let printed = to_string(&net);
            assert!(!printed.contains('['), "{f}: list syntax");
            assert_eq!(
                parse::<NetParameter>(&printed, Path::new(f)).unwrap(),
                net,
                "{f}"
            );
        }
        let solver: SolverParameter =
            read(&shared.join("models/finetune_flickr_style/solver.prototxt")).unwrap();
        assert_eq!(
            parse::<SolverParameter>(&to_string(&solver), Path::new("s")).unwrap(),
            solver
        );
        let odd = NetParameter {
            name: Some("a \"quoted\" \\ name\twith\ttabs, é and ∑".into()),
            ..Default::default()
        };
        let printed = to_string(&odd);
        assert_eq!(
            parse::<NetParameter>(&printed, Path::new("o")).unwrap(),
            odd,
            "{printed}"
        );
    }

    #[test]
    fn line_column_counts_from_one() {
        assert_eq!(line_column("ab\ncd", 4), (2, 2));
        assert_eq!(line_column("ab", 0), (1, 1));
    }
}
