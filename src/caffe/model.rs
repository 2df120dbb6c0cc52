//! Net definitions and trained weights: reading `.caffemodel` (binary) and
//! `.prototxt` (text) `NetParameter`s and upgrading the deprecated V1
//! `layers` format (the model-zoo CaffeNet) to V2 `layer`s and net-level
//! `input:` fields to an Input layer, as Caffe's
//! `ReadNetParamsFromBinaryFileOrDie` does.
use super::proto::{
    v1_layer_parameter::LayerType, BlobShape, InputParameter, LayerParameter, NetParameter,
    ParamSpec, TransformationParameter, V1LayerParameter,
};
use crate::error::{Error, Result};
use std::path::Path;

/// Reads a binary `.caffemodel` and upgrades it to V2 layers.
pub fn read_caffemodel(path: &Path) -> Result<NetParameter> {
    let read = if super::hdf5_snapshot::is_hdf5(path) {
        super::hdf5_snapshot::read_caffemodel(path)
    } else {
        super::read_binary(path, "caffemodel (NetParameter)")
    };
    let mut net: NetParameter = read.map_err(|e| mixed_up(e, path, ".solverstate"))?;
    upgrade(&mut net, &path.display().to_string())?;
    Ok(net)
}

/// A weights file or solver state that did not read, where its name says it
/// is the other kind (`other`: `.solverstate` or `.caffemodel`): the error
/// says which flag takes it. Any other error is kept.
pub(crate) fn mixed_up(e: Error, path: &Path, other: &str) -> Error {
    let name = path.to_string_lossy();
    let named = [other.to_string(), format!("{other}.h5")];
    if matches!(e, Error::Io { .. }) || !named.iter().any(|n| name.ends_with(n.as_str())) {
        return e;
    }
    let why = if other == ".solverstate" {
        "is a solver state (the solver's history), not weights: resume from it with \
         `finetune --snapshot`, or give the .caffemodel saved beside it as `--weights`"
    } else {
        "holds weights, not a solver state: start from it with `--weights`, or give the \
         .solverstate saved beside it to `--snapshot`"
    };
    Error::invalid(path.display(), why)
}

/// Reads a `.prototxt` net definition and upgrades it to V2 layers.
pub fn read_net_prototxt(path: &Path) -> Result<NetParameter> {
    let mut net: NetParameter = super::prototxt::read(path)?;
    upgrade(&mut net, &path.display().to_string())?;
    Ok(net)
}

/// Upgrades V1 layers to V2 and moves deprecated data-layer transform
/// fields into `transform_param`. Returns whether anything changed.
pub fn upgrade(net: &mut NetParameter, context: &str) -> Result<bool> {
    let mut changed = false;
    if !net.layers.is_empty() {
        if !net.layer.is_empty() {
            return Err(Error::invalid(
                context,
                "net mixes V1 `layers` and V2 `layer` fields; use one format",
            ));
        }
        net.layer = net
            .layers
            .drain(..)
            .map(|v1| upgrade_v1_layer(v1, context))
            .collect::<Result<_>>()?;
        changed = true;
    }
    for layer in &mut net.layer {
        changed |= upgrade_data_transform(layer);
    }
    changed |= upgrade_net_input(net, context)?;
    Ok(changed)
}

/// Caffe's UpgradeNetInput: net-level `input:` blobs (with `input_shape`,
/// or four `input_dim` values each, as older model-zoo deploy files such as
/// ResNet's declare them) become one Input layer named "input" at the front
/// of the net. An `input:` without any shape (legacy caffemodels) is dropped.
fn upgrade_net_input(net: &mut NetParameter, context: &str) -> Result<bool> {
    if net.input.is_empty() && net.input_shape.is_empty() && net.input_dim.is_empty() {
        return Ok(false);
    }
    let inputs = std::mem::take(&mut net.input);
    let shapes = std::mem::take(&mut net.input_shape);
    let dims = std::mem::take(&mut net.input_dim);
    if shapes.is_empty() && dims.is_empty() {
        return Ok(true);
    }
    let shape = if !shapes.is_empty() {
        if shapes.len() != inputs.len() {
            return Err(Error::invalid(
                context,
                format!(
                    "{} input blobs but {} input_shape entries; give one shape per input",
                    inputs.len(),
                    shapes.len()
                ),
            ));
        }
        shapes
    } else {
        if dims.len() != 4 * inputs.len() {
            return Err(Error::invalid(
                context,
                format!(
                    "{} input blobs but {} input_dim values; give four (N, C, H, W) per input",
                    inputs.len(),
                    dims.len()
                ),
            ));
        }
        dims.chunks(4)
            .map(|d| BlobShape {
                dim: d.iter().map(|&v| i64::from(v)).collect(),
            })
            .collect()
    };
    let layer = LayerParameter {
        name: Some("input".into()),
        r#type: Some("Input".into()),
        top: inputs,
        input_param: Some(InputParameter { shape }),
        ..Default::default()
    };
    net.layer.insert(0, layer);
    Ok(true)
}

/// Caffe's V2 type string for a V1 layer type enum.
pub fn v1_type_name(t: LayerType) -> Option<&'static str> {
    use LayerType::*;
    Some(match t {
        None => return Option::None,
        Absval => "AbsVal",
        Accuracy => "Accuracy",
        Argmax => "ArgMax",
        Bnll => "BNLL",
        Concat => "Concat",
        ContrastiveLoss => "ContrastiveLoss",
        Convolution => "Convolution",
        Data => "Data",
        Deconvolution => "Deconvolution",
        Dropout => "Dropout",
        DummyData => "DummyData",
        EuclideanLoss => "EuclideanLoss",
        Eltwise => "Eltwise",
        Exp => "Exp",
        Flatten => "Flatten",
        Hdf5Data => "HDF5Data",
        Hdf5Output => "HDF5Output",
        HingeLoss => "HingeLoss",
        Im2col => "Im2col",
        ImageData => "ImageData",
        InfogainLoss => "InfogainLoss",
        InnerProduct => "InnerProduct",
        Lrn => "LRN",
        MemoryData => "MemoryData",
        MultinomialLogisticLoss => "MultinomialLogisticLoss",
        Mvn => "MVN",
        Pooling => "Pooling",
        Power => "Power",
        Relu => "ReLU",
        Sigmoid => "Sigmoid",
        SigmoidCrossEntropyLoss => "SigmoidCrossEntropyLoss",
        Silence => "Silence",
        Softmax => "Softmax",
        SoftmaxLoss => "SoftmaxWithLoss",
        Split => "Split",
        Slice => "Slice",
        Tanh => "TanH",
        WindowData => "WindowData",
        Threshold => "Threshold",
    })
}

fn upgrade_v1_layer(v1: V1LayerParameter, context: &str) -> Result<LayerParameter> {
    let name = v1.name.clone().unwrap_or_default();
    let ty = LayerType::try_from(v1.r#type.unwrap_or(0)).unwrap_or(LayerType::None);
    let type_name = v1_type_name(ty).ok_or_else(|| {
        Error::invalid(
            context,
            format!(
                "V1 layer '{name}' has no or an unknown type ({:?})",
                v1.r#type
            ),
        )
    })?;
    let n_params = v1
        .param
        .len()
        .max(v1.blobs_lr.len())
        .max(v1.weight_decay.len());
    let param = (0..n_params)
        .map(|i| ParamSpec {
            name: v1.param.get(i).cloned(),
            share_mode: v1.blob_share_mode.get(i).copied(),
            lr_mult: v1.blobs_lr.get(i).copied(),
            decay_mult: v1.weight_decay.get(i).copied(),
        })
        .collect();
    Ok(LayerParameter {
        name: v1.name,
        r#type: Some(type_name.to_string()),
        bottom: v1.bottom,
        top: v1.top,
        loss_weight: v1.loss_weight,
        param,
        blobs: v1.blobs,
        include: v1.include,
        exclude: v1.exclude,
        transform_param: v1.transform_param,
        loss_param: v1.loss_param,
        accuracy_param: v1.accuracy_param,
        argmax_param: v1.argmax_param,
        concat_param: v1.concat_param,
        convolution_param: v1.convolution_param,
        data_param: v1.data_param,
        dropout_param: v1.dropout_param,
        dummy_data_param: v1.dummy_data_param,
        eltwise_param: v1.eltwise_param,
        contrastive_loss_param: v1.contrastive_loss_param,
        hinge_loss_param: v1.hinge_loss_param,
        hdf5_data_param: v1.hdf5_data_param,
        hdf5_output_param: v1.hdf5_output_param,
        image_data_param: v1.image_data_param,
        inner_product_param: v1.inner_product_param,
        lrn_param: v1.lrn_param,
        mvn_param: v1.mvn_param,
        exp_param: v1.exp_param,
        pooling_param: v1.pooling_param,
        power_param: v1.power_param,
        relu_param: v1.relu_param,
        sigmoid_param: v1.sigmoid_param,
        slice_param: v1.slice_param,
        softmax_param: v1.softmax_param,
        tanh_param: v1.tanh_param,
        threshold_param: v1.threshold_param,
        ..Default::default()
    })
}

/// Moves `scale`, `mean_file`, `crop_size` and `mirror` from a data layer's
/// own parameters into `transform_param` (Caffe's UpgradeNetDataTransformation).
fn upgrade_data_transform(layer: &mut LayerParameter) -> bool {
    let mut moved = Vec::new();
    if let Some(p) = layer.data_param.as_mut() {
        moved.push((
            p.scale.take(),
            p.mean_file.take(),
            p.crop_size.take(),
            p.mirror.take(),
        ));
    }
    if let Some(p) = layer.image_data_param.as_mut() {
        moved.push((
            p.scale.take(),
            p.mean_file.take(),
            p.crop_size.take(),
            p.mirror.take(),
        ));
    }
    let mut changed = false;
    for (scale, mean, crop, mirror) in moved {
        if scale.is_none() && mean.is_none() && crop.is_none() && mirror.is_none() {
            continue;
        }
        let t: &mut TransformationParameter =
            layer.transform_param.get_or_insert_with(Default::default);
        t.scale = scale.or(t.scale);
        t.mean_file = mean.or(t.mean_file.take());
        t.crop_size = crop.or(t.crop_size);
        t.mirror = mirror.or(t.mirror);
        changed = true;
    }
    changed
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::caffe::proto::{DataParameter, V1LayerParameter};

    fn parse_net(text: &str) -> Result<NetParameter> {
        let mut net: NetParameter =
            crate::caffe::prototxt::parse(text, std::path::Path::new("deploy.prototxt"))?;
        upgrade(&mut net, "deploy.prototxt")?;
        Ok(net)
    }

    #[test]
    fn net_level_inputs_become_an_input_layer_in_front() {
        let conv = r#"layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1" }"#;
        // ResNet's deploy files: four input_dim values per input.
        let net = parse_net(&format!(
            "input: \"data\" input_dim: 1 input_dim: 3 input_dim: 224 input_dim: 224 {conv}"
        ))
        .unwrap();
        assert!(net.input.is_empty() && net.input_dim.is_empty());
        assert_eq!(net.layer.len(), 2);
        let l = &net.layer[0];
        assert_eq!((l.name(), l.r#type()), ("input", "Input"));
        assert_eq!(l.top, ["data"]);
        assert_eq!(
            l.input_param.as_ref().unwrap().shape[0].dim,
            [1, 3, 224, 224]
        );
        assert_eq!(net.layer[1].name(), "conv1");
        // input_shape, two inputs.
        let net = parse_net(&format!(
            "input: \"a\" input_shape {{ dim: 2 dim: 5 }} input: \"b\" input_shape {{ dim: 2 }} {conv}"
        ))
        .unwrap();
        let shapes = &net.layer[0].input_param.as_ref().unwrap().shape;
        assert_eq!(net.layer[0].top, ["a", "b"]);
        assert_eq!(
            (shapes[0].dim.clone(), shapes[1].dim.clone()),
            (vec![2, 5], vec![2])
        );
        // A bare input (old caffemodels) is dropped; a wrong count is named.
        let net = parse_net(&format!("input: \"data\" {conv}")).unwrap();
        assert_eq!(net.layer.len(), 1);
        let e = parse_net("input: \"data\" input_dim: 1 input_dim: 3")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("deploy.prototxt") && e.contains("four (N, C, H, W) per input"),
            "{e}"
        );
    }

    #[test]
    fn v1_layers_become_v2_with_param_specs() {
        let mut net = NetParameter {
            layers: vec![V1LayerParameter {
                name: Some("conv1".into()),
                r#type: Some(LayerType::Convolution as i32),
                blobs_lr: vec![1.0, 2.0],
                weight_decay: vec![1.0, 0.0],
                ..Default::default()
            }],
            ..Default::default()
        };
        assert!(upgrade(&mut net, "t").unwrap());
        let l = &net.layer[0];
        assert_eq!(l.r#type(), "Convolution");
        assert_eq!(l.param[1].lr_mult(), 2.0);
        assert_eq!(l.param[1].decay_mult(), 0.0);
        assert!(net.layers.is_empty());
    }

    #[test]
    fn v1_neuron_and_slice_settings_come_along() {
        // The V1 text format, with its type enum and its own field numbers.
        let net = parse_net(
            r#"layers { name: "p" type: POWER bottom: "a" top: "b" power_param { power: 2 shift: 1 } }
layers { name: "s" type: SLICE bottom: "b" top: "c" top: "d" slice_param { slice_point: 1 } }
layers { name: "g" type: SIGMOID bottom: "c" top: "c" sigmoid_param { engine: CAFFE } }
layers { name: "t" type: TANH bottom: "d" top: "d" tanh_param { engine: CAFFE } }
layers { name: "e" type: EXP bottom: "d" top: "e" exp_param { base: 2 } }"#,
        )
        .unwrap();
        let types: Vec<&str> = net.layer.iter().map(|l| l.r#type()).collect();
        assert_eq!(types, ["Power", "Slice", "Sigmoid", "TanH", "Exp"]);
        assert_eq!(net.layer[0].power_param.unwrap().shift(), 1.0);
        assert_eq!(net.layer[1].slice_param.as_ref().unwrap().slice_point, [1]);
        assert!(net.layer[2].sigmoid_param.is_some() && net.layer[3].tanh_param.is_some());
        assert_eq!(net.layer[4].exp_param.unwrap().base(), 2.0);
    }

    #[test]
    fn data_layer_transform_fields_move() {
        let mut l = LayerParameter {
            data_param: Some(DataParameter {
                mean_file: Some("m.binaryproto".into()),
                crop_size: Some(227),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert!(upgrade_data_transform(&mut l));
        let t = l.transform_param.unwrap();
        assert_eq!(t.mean_file(), "m.binaryproto");
        assert_eq!(t.crop_size(), 227);
        assert!(l.data_param.unwrap().mean_file.is_none());
    }

    #[test]
    fn untyped_v1_layer_is_an_error() {
        let mut net = NetParameter {
            layers: vec![V1LayerParameter {
                name: Some("x".into()),
                ..Default::default()
            }],
            ..Default::default()
        };
        assert!(upgrade(&mut net, "m.caffemodel")
            .unwrap_err()
            .to_string()
            .contains("'x'"));
    }
}
