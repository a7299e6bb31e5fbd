"""Photos decoded at the size the model needs (JPEG draft mode) and within the process's pixel budget."""
import io
import threading

import numpy as np
import pytest
from PIL import Image
from torchvision import transforms as T

from multimodal_tags.data.images import PixelBudget, decode_image
from multimodal_tags.features.encode import ImageFiles
from multimodal_tags.features.prefetch import decode_photos, draft_side, split_transform

TRANSFORM = T.Compose([T.Resize(128), T.CenterCrop(128), T.ToTensor()])


def _large_jpeg(tmp_path, size=(2400, 1800)):
    x, y = np.meshgrid(np.linspace(0, 255, size[0]), np.linspace(0, 255, size[1]))
    pixels = np.stack([x, y, 255 - x], axis=-1).astype(np.uint8)  # smooth gradients: a fair resize test
    Image.fromarray(pixels).save(tmp_path / "big.jpg", "JPEG", quality=92)
    return "big.jpg"


def test_draft_side_is_the_first_resize_else_none():
    assert draft_side(TRANSFORM) == 128
    assert draft_side(T.Compose([T.Resize((96, 160)), T.ToTensor()])) == 160
    assert draft_side(T.Compose([T.RandomResizedCrop(128), T.ToTensor()])) is None


def test_a_large_jpeg_is_decoded_small_and_the_model_sees_nearly_the_same_pixels(tmp_path):
    ref = _large_jpeg(tmp_path)
    data = (tmp_path / ref).read_bytes()
    drafted = decode_image(data, "big", min_side=128)
    assert min(drafted.size) >= 128 and drafted.size[0] <= 2400 // 8 * 2  # decoded at 1/8 or 1/4 scale
    full = TRANSFORM(decode_image(data, "big"))
    _, via_files, error = ImageFiles([("h", ref)], tmp_path, TRANSFORM)[0]
    assert error is None and via_files.shape == full.shape
    assert float((via_files - full).abs().mean()) < 0.02  # of a 0..1 range
    pil_steps, tensor_steps = split_transform(TRANSFORM)
    [(_, array, error)] = decode_photos([("h", ref)], str(tmp_path), pil_steps)
    assert error is None and np.allclose(tensor_steps(array).numpy(), via_files.numpy())


def test_a_batch_normalised_at_once_holds_the_same_pixels_as_each_photo_transformed():
    import torch

    from multimodal_tags.features.pixels import PixelSteps
    from multimodal_tags.models.factory import create_image_encoder

    transform = create_image_encoder("timm:resnet10t@random").set_image_size(64).transform  # timm's own steps
    rng = np.random.default_rng(0)
    photos = [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for h, w in ((80, 60), (64, 64), (50, 90))]
    steps = PixelSteps(transform)
    assert steps.batched
    batch = steps.stack([steps.photo(p) for p in photos])
    assert torch.equal(batch, torch.stack([transform(p) for p in photos]))  # bit for bit
    assert batch.is_contiguous(memory_format=torch.channels_last)  # the CNNs' layout, without a copy
    mixed = steps.stack([steps.photo(photos[1]), transform(photos[2])])  # decoded ahead + read here
    assert torch.equal(mixed, torch.stack([transform(photos[1]), transform(photos[2])]))
    other = PixelSteps(TRANSFORM)  # no Normalize: run whole
    assert not other.batched and isinstance(other.photo(photos[0]), torch.Tensor)


def test_an_augmented_view_decodes_at_full_size(tmp_path):
    files = ImageFiles([("h", _large_jpeg(tmp_path))], tmp_path, TRANSFORM, augment_view=1)
    assert files.side is None


def test_decodes_wait_for_the_pixel_budget():
    budget = PixelBudget(100)
    first_in, release, second_in = threading.Event(), threading.Event(), threading.Event()

    def first():
        with budget.reserve(80):
            first_in.set()
            release.wait(10)

    def second():
        with budget.reserve(50):
            second_in.set()

    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    threads[0].start()
    assert first_in.wait(10)
    threads[1].start()
    assert not second_in.wait(0.2) and budget.in_use == 80  # 80 + 50 > 100: the second waits
    release.set()
    assert second_in.wait(10)
    for t in threads:
        t.join(10)
    assert budget.in_use == 0
    with budget.reserve(1000):  # one image over the whole budget still decodes, alone
        assert budget.in_use == 100


def test_a_decode_error_releases_its_pixels():
    from multimodal_tags.data.images import DECODE_BUDGET, ImageError
    buf = io.BytesIO()
    Image.new("RGB", (400, 300)).save(buf, "JPEG")
    with pytest.raises(ImageError):
        decode_image(buf.getvalue()[:200], "broken")
    assert DECODE_BUDGET.in_use == 0


def test_an_image_path_with_a_nul_character_is_refused_not_a_crash(tmp_path):
    from multimodal_tags.data.images import ImageError, resolve_image

    with pytest.raises(ImageError, match="NUL"):
        resolve_image("a\x00.jpg", tmp_path)
