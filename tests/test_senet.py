"""The Keras SE-ResNet's structure: names by rule, shapes of the release."""

import numpy as np
import pytest

from fer_tf import senet


@pytest.fixture(scope="module")
def senet50():
    return senet.se_resnet50()


def test_senet50_layer_names_follow_pytorch_module_paths(senet50):
    names = {layer.name for layer in senet50.layers}
    for expected in ("conv1", "bn1", "fc", "layer1_0_downsample_0", "layer2_0_downsample_1",
                     "layer3_5_conv4", "layer4_2_conv5", "layer3_2_bn3"):
        assert expected in names
    assert "layer1_1_downsample_0" not in names  # only block 0 projects


def test_senet50_shapes_and_parameter_count(senet50):
    # 224 -> conv1 112 -> ceil-mode max pool 56 (floor mode would give 55).
    assert senet50.get_layer("maxpool").output.shape[1:] == (56, 56, 64)
    assert senet50.get_layer("layer4_2_relu").output.shape[1:] == (7, 7, 2048)
    assert senet50.output.shape[1:] == (8631,)
    trainable = sum(int(np.prod(v.shape)) for v in senet50.trainable_weights)
    # docs/senet50.md: 43,723,943 parameters with the 8631-way fc, 331 stored tensors.
    assert trainable == 43_723_943
    assert len(senet50.weights) == 331


def test_caffe_style_stride_on_first_1x1_conv(senet50):
    assert senet50.get_layer("layer2_0_conv1").strides == (2, 2)
    assert senet50.get_layer("layer2_0_conv2").strides == (1, 1)
    assert senet50.get_layer("layer3_0_downsample_0").strides == (2, 2)


def test_batchnorm_matches_pytorch_defaults(senet50):
    bn = senet50.get_layer("layer1_0_bn2")
    assert bn.epsilon == 1e-5 and bn.momentum == pytest.approx(0.9)


def test_without_top_gives_pooled_feature():
    model = senet.se_resnet(blocks=(1, 1), base_width=8, include_top=False, input_shape=(64, 64, 3))
    assert model.output.shape[1:] == (4 * 8 * 2,)


@pytest.mark.parametrize("size,expected", [(112, 1), (113, 0), (111, 0), (55, 0), (56, 1)])
def test_ceil_mode_padding(size, expected):
    assert senet._ceil_mode_pad(size) == expected


def test_rejects_dynamic_input_shape():
    with pytest.raises(ValueError, match="static"):
        senet.se_resnet(input_shape=(None, None, 3))


def test_missing_weights_file_says_how_to_convert(tmp_path):
    with pytest.raises(FileNotFoundError, match="python -m weights_conversion"):
        senet.se_resnet50(weights=str(tmp_path / "nope.weights.h5"))
