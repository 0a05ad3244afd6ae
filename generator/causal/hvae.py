"""Conditional hierarchical VAE: the image mechanism x = f(z, pa, eps) of the deep structural causal model.

VDVAE-style: a bottom-up encoder of residual blocks, and a top-down decoder that starts from a learned 1x1 state,
walks up the preset's resolutions and, at the latent resolutions, draws z from a prior p(z_i | z_>i) that depends
only on the latents above it (never on the parents), so the latents are exogenous noise. The parents enter every
top-down block through a feature-wise affine modulation (FiLM) and an additive embedding, so the decoder can turn
a lesion on or off from the disease label. The likelihood is a discretised Gaussian per pixel; its standardised
residual is the pixel-level exogenous noise that counterfactual prediction reuses.

With `preset.lesion_blocks > 0` the disease node (`preset.lesion_node`) is routed differently: the top-down trunk
sees every other parent, and the disease enters only a lesion branch whose output, a pixel-mean map, is ADDED to the
trunk's mean and is exactly zero for category 0 (no finding). A disease is then an opacity drawn on top of an anatomy
that cannot depend on it. The pixel scale stays the trunk's: were the branch to change it too, a counterfactual would
rescale the abducted pixel noise (all the fine detail the latents leave to it) over the whole image. So
do(disease) changes an image by exactly the difference of the branch's maps, and nothing else.
Without it, a label change modulates every block, and counterfactuals drift far outside the lesion.

Pixels are in [-1, 1], parents in the data set's units (see generator.causal.parents.encode_parents).
"""

import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F
from torchvision.transforms.functional import gaussian_blur

from generator.causal.parents import encode_parents, encoded_width

LOG_SIGMA_MIN, LOG_SIGMA_MAX = -5.0, 0.0
BIN_HALF_WIDTH = 1.0 / 255.0
LESION_SEED_SIZE = 8  # side of the spatial seed a lesion code is mapped to, and of the pooled posterior input
LESION_HIDDEN = 128  # hidden width of the lesion posterior
LESION_MEAN_BOUND = 5.0  # posterior means of the lesion code stay within about +-5 prior standard deviations
RECTIFIER_LEAK = 0.1  # gradient slope of the lesion map's rectifier where it outputs zero (see Rectify)
ATTENUATION_START = -3.0  # logit of the lesion's attenuation of the anatomy's fine structure at the start (a = 0.05)
ANATOMY_DETAIL_SIGMA = 1.0  # pixels: the anatomy's fine structure is its mean less a Gaussian blur of this width


@dataclass
class Abduction:
    """Exogenous noise of an image: latents per stochastic block, the standardised pixel residual and, with a lesion
    latent, one lesion code per disease class ([N, classes, d]: the lesion seen in the image for its own class, prior
    draws for the others).

    `x`, `mean` and `log_sigma` are the factual image and the decoder's pixel distribution for it: prediction adds the
    change of the distribution to `x` itself, so a pixel whose mean and scale do not change keeps its value exactly.
    """

    latents: list
    pixel_noise: torch.Tensor
    lesion_latents: torch.Tensor | None = None
    x: torch.Tensor | None = None
    mean: torch.Tensor | None = None
    log_sigma: torch.Tensor | None = None
    # the factual parents, the trunk's top features and its lesion-free mean: an intervention that leaves the trunk's
    # parents alone (do(disease) with a lesion branch) only reruns the branch on these
    pa: dict | None = None
    features: torch.Tensor | None = None
    anatomy: torch.Tensor | None = None
    # with a lesion scale (preset `lesion_scale`): the trunk's pixel log-sigma before the lesion's offset
    anatomy_log_sigma: torch.Tensor | None = None


class ResBlock(nn.Module):
    """A residual block modulated by the parents when an embedding is given.

    Plain: two 3x3 convolutions at full width. Bottleneck (VDVAE's block, used by `paper-192`): 1x1 down to a quarter
    of the width, two 3x3 there, 1x1 back up; at the paper's widths about a tenth of the parameters and compute.
    """

    def __init__(self, width, embedding=0, scale_last=1.0, bottleneck=False):
        super().__init__()
        self.bottleneck = bottleneck
        if bottleneck:
            mid = bottleneck_width(width)
            self.conv1 = nn.Conv2d(width, mid, 1)
            self.middle = nn.Sequential(
                nn.Conv2d(mid, mid, 3, padding=1), nn.GELU(), nn.Conv2d(mid, mid, 3, padding=1), nn.GELU()
            )
            self.conv2 = nn.Conv2d(mid, width, 1)
        else:
            mid = width
            self.conv1 = nn.Conv2d(width, width, 3, padding=1)
            self.conv2 = nn.Conv2d(width, width, 3, padding=1)
        with torch.no_grad():
            self.conv2.weight.mul_(scale_last)
        self.film = nn.Linear(embedding, 2 * mid) if embedding else None

    def forward(self, h, pa_embedding=None):
        r = self.conv1(F.gelu(h))
        if self.film is not None:
            scale, shift = self.film(pa_embedding)[:, :, None, None].chunk(2, dim=1)
            r = r * (1 + scale) + shift
        r = F.gelu(r)
        if self.bottleneck:
            r = self.middle(r)
        return h + self.conv2(r)


def bottleneck_width(width):
    return max(width // 4, 1)


def conv_stack(c_in, c_out, width, bottleneck):
    """One 3x3 convolution, or VDVAE's bottleneck stack (1x1, 3x3, 3x3, 1x1 at a quarter of the block `width`)."""
    if not bottleneck:
        return nn.Conv2d(c_in, c_out, 3, padding=1)
    mid = bottleneck_width(width)
    return nn.Sequential(
        nn.Conv2d(c_in, mid, 1),
        nn.GELU(),
        nn.Conv2d(mid, mid, 3, padding=1),
        nn.GELU(),
        nn.Conv2d(mid, mid, 3, padding=1),
        nn.GELU(),
        nn.Conv2d(mid, c_out, 1),
    )


def last_conv(layer):
    return layer[-1] if isinstance(layer, nn.Sequential) else layer


class StochasticBlock(nn.Module):
    """Prior and posterior of one latent layer, then a parent-modulated residual block."""

    def __init__(self, width, z_channels, embedding, scale_last, bottleneck=False):
        super().__init__()
        self.z_channels = z_channels
        self.prior = conv_stack(width, 2 * z_channels + width, width, bottleneck)
        self.posterior = conv_stack(2 * width, 2 * z_channels, width, bottleneck)
        self.z_proj = nn.Conv2d(z_channels, width, 1)
        with torch.no_grad():
            last_conv(self.prior).weight[2 * z_channels :].zero_()
            last_conv(self.prior).bias.zero_()
            self.z_proj.weight.mul_(scale_last)
        self.res = ResBlock(width, embedding, scale_last, bottleneck)

    def forward(self, h, pa_embedding, encoded=None, z=None, sample=True, generator=None, temperature=1.0):
        prior_stats = self.prior(F.gelu(h))
        p_mean, p_logstd, features = prior_stats.split([self.z_channels, self.z_channels, h.shape[1]], dim=1)
        kl = None
        q_mean = q_logstd = None
        if encoded is not None:
            q_mean, q_logstd = self.posterior(F.gelu(torch.cat([h, encoded], dim=1))).chunk(2, dim=1)
            kl = gaussian_kl(q_mean, q_logstd, p_mean, p_logstd)
        if z is None:
            mean, logstd = (q_mean, q_logstd) if encoded is not None else (p_mean, p_logstd)
            if sample:
                noise = torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
                z = mean + torch.exp(logstd) * noise * temperature
            else:
                z = mean
        h = h + features + self.z_proj(z)
        return self.res(h, pa_embedding), z, kl


def parent_mlp(width, embedding):
    return nn.Sequential(nn.Linear(width, embedding), nn.GELU(), nn.Linear(embedding, embedding))


def gaussian_kl(q_mean, q_logstd, p_mean, p_logstd):
    return (
        p_logstd - q_logstd + 0.5 * (torch.exp(2 * q_logstd) + (q_mean - p_mean) ** 2) / torch.exp(2 * p_logstd) - 0.5
    )


def discretised_gaussian_log_likelihood(x, mean, log_sigma):
    """Log-probability of 8-bit pixel bins in [-1, 1] under a Gaussian; edge bins take the tail mass."""
    inv_sigma = torch.exp(-log_sigma)
    upper = (x - mean + BIN_HALF_WIDTH) * inv_sigma
    lower = (x - mean - BIN_HALF_WIDTH) * inv_sigma
    log_cdf_upper = torch.special.log_ndtr(upper)
    log_survival_lower = torch.special.log_ndtr(-lower)
    mass = (torch.special.ndtr(upper) - torch.special.ndtr(lower)).clamp(min=1e-12)
    middle = torch.log(mass)
    return torch.where(x < -0.999, log_cdf_upper, torch.where(x > 0.999, log_survival_lower, middle))


class Rectify(torch.autograd.Function):
    """max(m, 0) forward; where it is zero, a small gradient that can only raise m.

    The support gate of the lesion map must output exact zeros, so a counterfactual leaves every pixel outside the
    lesion as it was. A plain ReLU also stops the gradient there: early in training, before the anatomy adversary
    has pushed the lesions out of the trunk, the likelihood drives the whole map below zero and the branch never
    draws again (seen on the phantom: an all-zero map after 1,000 steps). Where the map is zero, the gradient is
    passed (scaled by RECTIFIER_LEAK) only when the loss asks for MORE opacity: a two-sided leak would keep pushing
    m down where the image is darker than the mean, without the output ever changing, and the weights diverge.
    """

    @staticmethod
    def forward(ctx, m):
        ctx.save_for_backward(m)
        return m.clamp(min=0)

    @staticmethod
    def backward(ctx, grad):
        (m,) = ctx.saved_tensors
        wants_more = grad < 0  # descent raises m
        scale = torch.where(m > 0, 1.0, torch.where(wants_more, RECTIFIER_LEAK, 0.0))
        return grad * scale.to(grad.dtype)


def rectify(m):
    return Rectify.apply(m)


def anatomy_detail(image, sigma=ANATOMY_DETAIL_SIGMA):
    """The fine structure of an image: the image less its Gaussian blur (`sigma` pixels, 3-sigma kernel)."""
    return image - gaussian_blur(image, kernel_size=2 * math.ceil(3 * sigma) + 1, sigma=sigma)


def silent(layer):
    """`layer` with every parameter zero: it outputs nothing at the start, and its weights still get a gradient."""
    with torch.no_grad():
        for parameter in layer.parameters():
            parameter.zero_()
    return layer


class ConditionalHVAE(nn.Module):
    def __init__(self, preset, graph):
        super().__init__()
        self.graph = graph
        self.resolution = preset.resolution
        self.resolutions = preset.resolutions
        self.latent_resolutions = set(preset.latent_resolutions)
        widths = dict(zip(preset.resolutions, preset.widths))
        blocks = dict(zip(preset.resolutions, preset.blocks))
        embedding = preset.parent_embedding
        total_blocks = sum(preset.blocks)
        scale_last = (1.0 / total_blocks) ** 0.5  # keeps the residual stream's variance flat with depth
        bottleneck = bool(preset.bottleneck)

        self.lesion_node = preset.lesion_node if preset.lesion_blocks else None
        if self.lesion_node is not None and self.lesion_node not in graph.names:
            raise ValueError(f"preset {preset.name!r}: lesion node {self.lesion_node!r} is not in the graph")
        self.trunk_parents = [n for n in graph.names if n != self.lesion_node]
        self.parent_net = parent_mlp(encoded_width(graph, self.trunk_parents), embedding)

        # With no blocks at the image resolution, the stem folds 2x2 pixel patches into channels and the output
        # unfolds them again: the network then runs at half resolution, where it is four times cheaper.
        self.patchify = preset.blocks[-1] == 0
        self.trunk_resolutions = preset.resolutions[:-1] if self.patchify else preset.resolutions
        top = self.trunk_resolutions[-1]
        if self.patchify and top * 2 != self.resolution:
            raise ValueError(
                f"preset {preset.name!r}: without image-resolution blocks the last two resolutions must differ by 2x"
            )

        # bottom-up: image resolution first
        if self.patchify:
            self.stem = nn.Sequential(nn.PixelUnshuffle(2), nn.Conv2d(4, widths[top], 3, padding=1))
        else:
            self.stem = nn.Conv2d(1, widths[top], 3, padding=1)
        self.encoder_blocks = nn.ModuleDict()
        self.encoder_resize = nn.ModuleDict()
        for res in reversed(self.trunk_resolutions):
            self.encoder_blocks[str(res)] = nn.ModuleList(
                ResBlock(widths[res], scale_last=scale_last, bottleneck=bottleneck) for _ in range(blocks[res])
            )
        for higher, lower in zip(reversed(self.trunk_resolutions[1:]), reversed(self.trunk_resolutions[:-1])):
            self.encoder_resize[str(lower)] = nn.Conv2d(widths[higher], widths[lower], 1)

        # top-down: 1 px first
        self.top_state = nn.Parameter(torch.zeros(1, widths[1], 1, 1))
        self.decoder_resize = nn.ModuleDict()
        self.decoder_parent = nn.ModuleDict()
        self.decoder_blocks = nn.ModuleDict()
        for lower, higher in zip(self.trunk_resolutions[:-1], self.trunk_resolutions[1:]):
            self.decoder_resize[str(higher)] = nn.Conv2d(widths[lower], widths[higher], 1)
        for res in self.trunk_resolutions:
            self.decoder_parent[str(res)] = nn.Linear(embedding, widths[res])
            if res in self.latent_resolutions:
                layers = [
                    StochasticBlock(widths[res], preset.z_channels, embedding, scale_last, bottleneck)
                    for _ in range(blocks[res])
                ]
            else:
                layers = [ResBlock(widths[res], embedding, scale_last, bottleneck) for _ in range(blocks[res])]
            self.decoder_blocks[str(res)] = nn.ModuleList(layers)
        self.output = self.output_head(widths[top])
        has_lesion = self.lesion_node is not None
        self.lesion_code_dim = preset.lesion_latent if has_lesion else 0
        self.lesion_map_channels = preset.lesion_latent_map if has_lesion else 0
        self.lesion_support = bool(preset.lesion_support) and has_lesion
        self.lesion_scale = bool(preset.lesion_scale) and self.lesion_support
        self.lesion_composite = preset.lesion_blend == "composite" and self.lesion_support
        self.lesion_attenuates = bool(preset.lesion_attenuates) and self.lesion_support and not self.lesion_composite
        self.lesion_free_bits = float(preset.lesion_free_bits)
        self.lesion_kl_weight = float(preset.lesion_kl_weight)
        self.lesion_sparsity = float(preset.lesion_sparsity) if has_lesion else 0.0
        self.lesion_detached = bool(preset.lesion_detached) and has_lesion
        self.lesion_reads = preset.lesion_reads
        if has_lesion:
            self.lesion_parent_net = parent_mlp(encoded_width(graph, graph.names), embedding)
            if self.lesion_reads == "anatomy":
                # a small stem over the lesion-free image, unfolded to the trunk's grid when the trunk runs at half size
                channels = 4 if self.patchify else 1
                self.lesion_input = nn.Sequential(
                    nn.Conv2d(channels, widths[top], 3, padding=1),
                    nn.GELU(),
                    nn.Conv2d(widths[top], widths[top], 3, padding=1),
                    nn.GELU(),
                    nn.Conv2d(widths[top], widths[top], 3, padding=1),
                )
            else:
                self.lesion_input = nn.Conv2d(widths[top], widths[top], 3, padding=1)
            self.lesion_blocks = nn.ModuleList(
                ResBlock(widths[top], embedding, scale_last) for _ in range(preset.lesion_blocks)
            )
            # one map at the trunk's own resolution, upsampled bilinearly when the trunk runs at half size: a lesion
            # is a smooth opacity, and the free 2x2 sub-pixels of a patch-unfolding head let counterfactual training
            # paint checkerboard patterns that convince a classifier without being a lesion
            # additive: the map; composite: the optical depth and the density
            # the branch starts by drawing nothing
            self.lesion_output = silent(nn.Conv2d(widths[top], 2 if self.lesion_composite else 1, 3, padding=1))
            if self.lesion_attenuates:  # how much of the anatomy's fine structure the lesion hides, per position
                self.lesion_attenuation_output = silent(nn.Conv2d(widths[top], 1, 3, padding=1))
            if self.lesion_scale:  # and by leaving the pixel scale as the trunk has it
                self.lesion_scale_output = silent(nn.Conv2d(widths[top], 1, 3, padding=1))
        # z_L per disease class, flattened: the vector code first, then the spatial code's channels x grid
        self.lesion_posterior_resolution = max(r for r in self.trunk_resolutions if r <= 16)
        self.lesion_map_size = self.lesion_posterior_resolution
        self.lesion_latent_dim = self.lesion_code_dim + self.lesion_map_channels * self.lesion_map_size**2
        if self.lesion_latent_dim:
            self.lesion_classes = graph[self.lesion_node].cardinality - 1
            posterior_width = widths[self.lesion_posterior_resolution]
        if self.lesion_code_dim:
            # q(z_L | x, disease): read from the encoder at the finest resolution up to 16 px, pooled to at most 8 px
            # and flattened, so the code can say WHERE the lesion is (side, lobe) as well as how it looks
            pooled = min(self.lesion_posterior_resolution, LESION_SEED_SIZE)
            self.lesion_posterior = nn.Sequential(
                nn.Linear(posterior_width * pooled * pooled, LESION_HIDDEN),
                nn.GELU(),
                nn.Linear(LESION_HIDDEN, self.lesion_classes * 2 * self.lesion_code_dim),
            )
            with torch.no_grad():  # the posterior starts at the prior
                self.lesion_posterior[-1].weight.mul_(0.1)
                self.lesion_posterior[-1].bias.zero_()
            # z_L -> a coarse spatial seed added to the branch's input: the code places the lesion on the anatomy
            self.lesion_seed = nn.Linear(
                self.lesion_classes * self.lesion_code_dim, widths[top] * LESION_SEED_SIZE * LESION_SEED_SIZE
            )
        if self.lesion_map_channels:
            # the spatial code: a per-position posterior read by a convolution from the same encoder grid, and a
            # convolution that turns the image's own class's map into a seed at that grid
            self.lesion_map_posterior = nn.Sequential(
                nn.Conv2d(posterior_width, posterior_width, 3, padding=1),
                nn.GELU(),
                nn.Conv2d(posterior_width, self.lesion_classes * 2 * self.lesion_map_channels, 3, padding=1),
            )
            with torch.no_grad():
                self.lesion_map_posterior[-1].weight.mul_(0.1)
                self.lesion_map_posterior[-1].bias.zero_()
            # the spatial code enters silent: at the start its posterior is the prior, and hundreds of N(0, 1)
            # values per image fed straight into the branch drown what it must first learn from the features (on one
            # phantom seed of three the branch then never started and the trunk drew every lesion)
            self.lesion_map_seed = silent(nn.Conv2d(self.lesion_map_channels, widths[top], 3, padding=1))

    def output_head(self, width, channels=2):
        """Pixel maps (mean and log-sigma by default) from the top features, unfolding 2x2 patches when the trunk
        runs at half size."""
        if self.patchify:
            return nn.Sequential(nn.Conv2d(width, 4 * channels, 3, padding=1), nn.PixelShuffle(2))
        return nn.Conv2d(width, channels, 3, padding=1)

    # --- building blocks -------------------------------------------------------------------------------------------

    def embed_parents(self, pa):
        return self.parent_net(encode_parents(self.graph, pa, self.trunk_parents))

    def disease_slots(self, pa):
        """[N, classes] one-hot of the lesion node without category 0: which lesion code an image's lesion uses."""
        return F.one_hot(pa[self.lesion_node].long(), self.lesion_classes + 1)[:, 1:].float()

    def lesion(self, h, pa, lesion_latents=None, anatomy=None):
        """The lesion branch's change of the pixel mean (see `lesion_outputs`)."""
        return self.lesion_outputs(h, pa, lesion_latents, anatomy)[0]

    def lesion_outputs(self, h, pa, lesion_latents=None, anatomy=None):
        """The lesion branch's change of the pixel mean (its map, or with `lesion_blend="composite"` the blend towards
        its density) and its pixel log-sigma offset (None without `lesion_scale`); both zero wherever the lesion node
        is in category 0.

        With a lesion latent, the code of the image's own disease class (`lesion_latents[:, k - 1]`) shapes the map;
        with a support gate the map is rectified: an opacity only adds attenuation, and it is exactly zero outside
        the lesion, so a counterfactual keeps every pixel there.

        `anatomy` is the trunk's lesion-free pixel mean, which the branch reads instead of `h` when the preset says
        `lesion_reads="anatomy"`.

        The log-sigma offset is masked by the support (the pixels the rectified map makes non-zero), so outside the
        lesion the pixel distribution, and with it a counterfactual, stays exactly the trunk's.
        """
        embedding = self.lesion_parent_net(encode_parents(self.graph, pa, self.graph.names))
        if self.lesion_reads == "anatomy":
            image = anatomy.detach()
            r = self.lesion_input(F.pixel_unshuffle(image, 2) if self.patchify else image)
        else:
            r = self.lesion_input(F.gelu(h.detach() if self.lesion_detached else h))
        if self.lesion_latent_dim:
            chosen = lesion_latents * self.disease_slots(pa).to(r.dtype)[:, :, None]
            code, grid = chosen.split([self.lesion_code_dim, self.lesion_latent_dim - self.lesion_code_dim], dim=2)
            if self.lesion_code_dim:
                seed = self.lesion_seed(code.flatten(1)).view(len(r), r.shape[1], LESION_SEED_SIZE, LESION_SEED_SIZE)
                r = r + F.interpolate(seed, size=r.shape[-2:], mode="bilinear", align_corners=False)
            if self.lesion_map_channels:
                # only the image's own class is non-zero, so the sum over classes selects its map
                size = self.lesion_map_size
                grid = grid.sum(1).view(len(r), self.lesion_map_channels, size, size)
                seed = self.lesion_map_seed(grid)
                r = r + F.interpolate(seed, size=r.shape[-2:], mode="bilinear", align_corners=False)
        for block in self.lesion_blocks:
            r = block(r, embedding)
        present = (pa[self.lesion_node] != 0).to(r.dtype)[:, None, None, None]
        features = F.gelu(r)
        drawn = self.lesion_output(features)
        if self.lesion_support:
            # the map (or the optical depth) is rectified; a composite's density is not
            drawn = torch.cat([rectify(drawn[:, :1]), drawn[:, 1:]], dim=1)
        if self.lesion_attenuates:
            drawn = torch.cat([drawn, self.lesion_attenuation_output(features)], dim=1)
        if self.lesion_scale:
            drawn = torch.cat([drawn, self.lesion_scale_output(features)], dim=1)
        if drawn.shape[-1] != self.resolution:
            size = (self.resolution, self.resolution)
            drawn = F.interpolate(drawn, size=size, mode="bilinear", align_corners=False)
        first = drawn[:, :1] * present
        if self.lesion_composite:
            # alpha is exactly 0 where tau is, so outside the support the change is an exact zero
            alpha = 1.0 - torch.exp(-first)
            density = torch.tanh(drawn[:, 1:2])
            lesion = alpha * (density - anatomy)
        elif self.lesion_attenuates:
            # the hidden fine structure, on the support only: outside it the change stays an exact zero
            attenuation = torch.sigmoid(drawn[:, 1:2] + ATTENUATION_START) * (first > 0).to(drawn.dtype)
            lesion = first - attenuation * anatomy_detail(anatomy.detach())
        else:
            lesion = first
        scale = drawn[:, -1:] * (first > 0).to(drawn.dtype) if self.lesion_scale else None
        return lesion, scale

    def lesion_posterior_stats(self, activations, pa):
        """Mean and log-std [N, d] of q(z_L | x) for each image's own disease class (zeros for no finding)."""
        h = F.gelu(activations[self.lesion_posterior_resolution])
        parts = []
        if self.lesion_code_dim:
            pooled = F.adaptive_avg_pool2d(h, min(h.shape[-1], LESION_SEED_SIZE))
            parts.append(self.lesion_posterior(pooled.flatten(1)).view(len(h), self.lesion_classes, 2, -1))
        if self.lesion_map_channels:
            grid = self.lesion_map_posterior(h).view(len(h), self.lesion_classes, 2, self.lesion_map_channels, -1)
            parts.append(grid.flatten(3))
        stats = torch.cat(parts, dim=3)
        slots = self.disease_slots(pa).to(stats.dtype)[:, :, None, None]
        mean, logstd = (stats * slots).sum(1).unbind(1)
        # softly bounded: a code far outside the prior's bulk is never a plausible lesion, and an unbounded mean
        # lets one bad step run away
        mean = LESION_MEAN_BOUND * torch.tanh(mean / LESION_MEAN_BOUND)
        return mean, logstd.clamp(-7.0, 2.0)

    def prior_lesion_latents(self, n, device, generator=None, dtype=torch.float32):
        shape = (n, self.lesion_classes, self.lesion_latent_dim)
        return torch.randn(shape, generator=generator, device=device, dtype=dtype)

    def infer_lesion_latents(self, activations, pa, sample=True, generator=None):
        """z_L for a batch: the image's own class from the posterior (a draw, or its mean), every other class from the
        N(0, I) prior; and the KL per image in nats (zero for no finding, whose posterior is the prior)."""
        mean, logstd = self.lesion_posterior_stats(activations, pa)
        latents = self.prior_lesion_latents(len(mean), mean.device, generator, mean.dtype)
        slots = self.disease_slots(pa).to(mean.dtype)
        own = mean
        if sample:
            noise = torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
            own = mean + torch.exp(logstd) * noise
        latents = latents * (1 - slots[:, :, None]) + own[:, None, :] * slots[:, :, None]
        present = slots.sum(1)
        kl = gaussian_kl(mean, logstd, torch.zeros_like(mean), torch.zeros_like(logstd)).sum(1) * present
        return latents, kl

    def encode(self, x):
        """Bottom-up activations at every latent resolution."""
        h = self.stem(x)
        activations = {}
        for res in reversed(self.trunk_resolutions):
            if h.shape[-1] != res:
                h = self.encoder_resize[str(res)](F.adaptive_avg_pool2d(h, res))
            for block in self.encoder_blocks[str(res)]:
                h = block(h)
            activations[res] = h
        return activations

    def decode(
        self,
        pa,
        activations=None,
        latents=None,
        sample=True,
        generator=None,
        temperature=1.0,
        lesion_latents=None,
        lesion_sample=None,
    ):
        """Run the decoder. Returns a dict: pixel `mean` and `log_sigma`, the `latents` used, the `kls` per latent
        layer, and with a lesion branch its map (`lesion`) and the trunk's mean without it (`anatomy`); with a lesion
        latent also `lesion_latents` and `lesion_kl` (nats per image; zero unless inferred from `activations`).

        `lesion_sample` (default: `sample`) says whether the image's own lesion code is a posterior draw or the mean.
        """
        embedding = self.embed_parents(pa)
        n = embedding.shape[0]
        h = self.top_state.expand(n, -1, -1, -1)
        used, kls = [], []
        given = iter(latents) if latents is not None else None
        for res in self.trunk_resolutions:
            if h.shape[-1] != res:
                h = self.decoder_resize[str(res)](F.interpolate(h, size=(res, res), mode="nearest"))
            h = h + self.decoder_parent[str(res)](embedding)[:, :, None, None]
            for block in self.decoder_blocks[str(res)]:
                if isinstance(block, StochasticBlock):
                    encoded = activations[res] if activations is not None and given is None else None
                    z = next(given) if given is not None else None
                    h, z, kl = block(h, embedding, encoded, z, sample, generator, temperature)
                    used.append(z)
                    if kl is not None:
                        kls.append(kl)
                else:
                    h = block(h, embedding)
        anatomy, log_sigma = self.output(F.gelu(h)).chunk(2, dim=1)
        lesion_kl = torch.zeros(n, device=h.device, dtype=h.dtype)
        if self.lesion_latent_dim and lesion_latents is None:
            if activations is not None:
                own_sample = sample if lesion_sample is None else lesion_sample
                lesion_latents, lesion_kl = self.infer_lesion_latents(activations, pa, own_sample, generator)
            else:
                lesion_latents = self.prior_lesion_latents(n, h.device, generator, h.dtype) * temperature
        lesion, scale = (
            self.lesion_outputs(h, pa, lesion_latents, anatomy) if self.lesion_node is not None else (None, None)
        )
        mean = anatomy + lesion if lesion is not None else anatomy
        return {
            "mean": mean,
            "log_sigma": self.pixel_log_sigma(log_sigma, scale),
            "anatomy_log_sigma": log_sigma,
            "latents": used,
            "kls": kls,
            "anatomy": anatomy,
            "lesion": lesion,
            "lesion_latents": lesion_latents,
            "lesion_kl": lesion_kl,
            "features": h,
        }

    @staticmethod
    def pixel_log_sigma(anatomy_log_sigma, scale):
        """The pixel log-sigma: the trunk's, plus the lesion's offset where it has one, clamped to the valid range."""
        log_sigma = anatomy_log_sigma if scale is None else anatomy_log_sigma + scale
        return log_sigma.clamp(LOG_SIGMA_MIN, LOG_SIGMA_MAX)

    def top_down(self, pa, activations=None, latents=None, sample=True, generator=None, temperature=1.0):
        """Run the decoder; returns pixel mean, pixel log-sigma, the latents used and the KL per latent layer."""
        out = self.decode(pa, activations, latents, sample, generator, temperature)
        return out["mean"], out["log_sigma"], out["latents"], out["kls"]

    # --- training objective ----------------------------------------------------------------------------------------

    def elbo(self, x, pa, generator=None):
        """Negative ELBO in nats per pixel (the free energy F_FE), with its parts and the sampled latents.

        `objective` is what training minimises: the free energy, except that the lesion code's KL is weighted by
        `lesion_kl_weight`, with `lesion_free_bits` it counts as at least that many nats on a diseased image (so the
        code is used, not ignored), and with `lesion_sparsity` the mean absolute lesion map is added (the smallest
        lesion layer that explains the image).
        """
        decoded = self.decode(pa, self.encode(x), sample=True, generator=generator)
        mean, log_sigma, latents, kls = (decoded[k] for k in ("mean", "log_sigma", "latents", "kls"))
        dims = x[0].numel()
        nll = -discretised_gaussian_log_likelihood(x, mean, log_sigma).flatten(1).sum(1) / dims
        lesion_kl = decoded["lesion_kl"]
        kl = (sum(k.flatten(1).sum(1) for k in kls) + lesion_kl) / dims
        objective = nll + kl
        counted = lesion_kl  # the lesion code's KL as training counts it
        if self.lesion_latent_dim and self.lesion_free_bits > 0:
            present = (pa[self.lesion_node] != 0).to(lesion_kl.dtype)
            floor = (lesion_kl.clamp(min=self.lesion_free_bits) - lesion_kl) * present
            objective = objective + floor / dims
            counted = counted + floor
        if self.lesion_kl_weight != 1.0:
            objective = objective + (self.lesion_kl_weight - 1.0) * counted / dims
        if self.lesion_sparsity > 0 and decoded["lesion"] is not None:
            # the likelihood sees only anatomy + lesion, so it cannot tell a faint veil drawn by the branch from the
            # same veil drawn by the trunk; the smaller lesion layer wins the tie
            objective = objective + self.lesion_sparsity * decoded["lesion"].abs().flatten(1).mean(1)
        # the sampled latents and the residual under them are a posterior draw of the exogenous noise: counterfactual
        # training makes its counterfactuals from them, so the ELBO and the predictors judge the same draw
        abduction = self.abduction(x, pa, decoded)
        return {
            "free_energy": nll + kl,
            "objective": objective,
            "nll": nll,
            "kl": kl,
            "lesion_kl": lesion_kl,
            "latents": latents,
            "abduction": abduction,
            "anatomy": decoded["anatomy"],
            "anatomy_log_sigma": decoded["anatomy_log_sigma"],
            "lesion": decoded["lesion"],
        }

    # --- counterfactual inference ----------------------------------------------------------------------------------

    def abduct(self, x, pa, sample=False, generator=None):
        """The exogenous noise of x: posterior latents (means, or a draw), the pixel noise that makes the decoder
        reproduce x exactly and, with a lesion latent, the lesion codes.

        With a lesion latent the anatomy's latents are always the posterior means, and `sample` draws only the code
        of the lesion seen in the image: several abductions then differ in the lesion alone, never outside it. The
        codes of the other disease classes, which a factual image cannot reveal, are prior draws from `generator`.
        """
        trunk_sample = sample and not self.lesion_latent_dim
        decoded = self.decode(pa, self.encode(x), sample=trunk_sample, generator=generator, lesion_sample=bool(sample))
        return self.abduction(x, pa, decoded)

    @staticmethod
    def abduction(x, pa, decoded):
        """The Abduction of x from the decoder's output for it."""
        mean, log_sigma = decoded["mean"], decoded["log_sigma"]
        return Abduction(
            latents=decoded["latents"],
            pixel_noise=(x - mean) * torch.exp(-log_sigma),
            lesion_latents=decoded["lesion_latents"],
            x=x,
            mean=mean,
            log_sigma=log_sigma,
            pa=pa,
            features=decoded["features"],
            anatomy=decoded["anatomy"],
            anatomy_log_sigma=decoded["anatomy_log_sigma"],
        )

    def trunk_unchanged(self, abduction, pa):
        """Whether `pa` gives the trunk the same parents as the abducted image had (its output is then the same)."""
        if abduction.features is None or abduction.pa is None:
            return False
        return all(torch.equal(pa[name], abduction.pa[name]) for name in self.trunk_parents)

    def predict_decoded(self, abduction, pa):
        """The decoder's output under `pa` for the abducted noise; reruns only the lesion branch when it can."""
        if self.lesion_node is not None and self.trunk_unchanged(abduction, pa):
            lesion, scale = self.lesion_outputs(abduction.features, pa, abduction.lesion_latents, abduction.anatomy)
            log_sigma = self.pixel_log_sigma(abduction.anatomy_log_sigma, scale)
            return {"mean": abduction.anatomy + lesion, "log_sigma": log_sigma, "lesion": lesion}
        return self.decode(pa, latents=abduction.latents, lesion_latents=abduction.lesion_latents)

    def predict(self, abduction, pa, with_lesion=False):
        """The image the abducted noise gives under parents `pa`; with `with_lesion`, also the branch's map.

        x_cf = mean_cf + sigma_cf * noise, computed as x + (mean_cf - mean) + (sigma_cf - sigma) * noise when the
        abduction holds the factual image: the same number, but a pixel whose distribution does not change is
        returned bit for bit.
        """
        decoded = self.predict_decoded(abduction, pa)
        sigma_cf = torch.exp(decoded["log_sigma"])
        if abduction.x is not None:
            change = (decoded["mean"] - abduction.mean) + (sigma_cf - torch.exp(abduction.log_sigma)) * (
                abduction.pixel_noise
            )
            x = (abduction.x + change).clamp(-1.0, 1.0)
        else:
            x = (decoded["mean"] + sigma_cf * abduction.pixel_noise).clamp(-1.0, 1.0)
        return (x, decoded["lesion"]) if with_lesion else x

    def reconstruct(self, x, pa):
        """Decoder mean from the posterior-mean latents (no pixel noise): what the latents and parents explain."""
        out = self.decode(pa, self.encode(x), sample=False)
        return out["mean"].clamp(-1.0, 1.0)

    @torch.no_grad()
    def sample(self, pa, generator=None, temperature=1.0):
        mean, log_sigma, _, _ = self.top_down(pa, sample=True, generator=generator, temperature=temperature)
        noise = torch.randn(mean.shape, generator=generator, device=mean.device) * temperature
        return (mean + torch.exp(log_sigma) * noise).clamp(-1.0, 1.0)
