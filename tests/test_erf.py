"""The effective receptive field: a gradient map inside the theoretical field, and its 95% mass fraction."""

import torch
from torch import nn

from cnnpipe.analysis.erf import central_field_box, effective_receptive_field, mass_fraction
from cnnpipe.analysis.receptive_field import receptive_fields


def test_erf_lies_inside_the_theoretical_field_and_is_concentrated_in_the_centre():
    torch.manual_seed(0)
    network = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.Conv2d(2, 2, 3, padding=1), nn.Conv2d(2, 1, 3))
    for conv in network:
        nn.init.constant_(conv.weight, 0.1)
    images = torch.rand(4, 1, 16, 16)
    heat = effective_receptive_field(network, "2", images)
    field = {f.name: f for f in receptive_fields(network, (1, 16, 16))}["2"]
    top, left, bottom, right = central_field_box(field, heat.shape)
    assert (bottom - top + 1, right - left + 1) == (7, 7)
    inside = heat[int(top) : int(bottom) + 1, int(left) : int(right) + 1]
    assert abs(heat.sum() - 1) < 1e-9 and abs(inside.sum() - 1) < 1e-9  # nothing outside the field
    assert inside[3, 3] == inside.max() > inside[0, 0]  # three stacked convs: a peak in the middle
    assert 0.5 < mass_fraction(heat, field) < 1
