"""The parts of CPA (Lotfollahi et al., Mol Syst Biol 2023), usable by any model.

- decoder ``additive_embedding``: CPA's compositional latent. The decoder's input block is the
  *basal* state; the decoder adds a learned embedding of the treatment at its dose and of the
  covariates before its MLP::

      z = z_basal + Σ_d f_d(dose_d) · e_d + Σ_k E_k[x_k]        heads = MLP(z)

  ``f_d`` is a learned monotone dose-response per treatment with ``f_d(0) = 0`` (controls get no
  treatment embedding). The doses come from the ``t`` label (dose-weighted multi-hot) and the
  covariates from the ``x`` label (one-hot per covariate column), so the decoder's spec lists the
  conditions ``("x", "t")``; with one of them left out, that embedding is left out.
- regulariser ``adversarial_classifier``: CPA's adversaries. Classifiers predict ``t`` and ``x`` from
  the basal block; they train on detached latents (own optimiser) with cross-entropy plus a gradient
  penalty ``pen · mean_cells ||∇_z Σ logits||²``; the model's term is ``−CE``, so the encoder learns
  a basal state from which neither can be told.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fcrkit.components.decoders import MLPDecoder
from fcrkit.components.nn import mlp, mlp_width
from fcrkit.components.structure import _check_blocks, _check_label
from fcrkit.components.treatments import build_treatment_encoder
from fcrkit.data.labels import treatment_entries
from fcrkit.errors import ConfigError, check_choice
from fcrkit.hookspecs import hookimpl
from fcrkit.protocols import Context, LabelDims, Labels, ModelInfo

DOSE_RESPONSES = ("sigmoid", "mlp", "linear")


class DoseResponse(nn.Module):
    """One learned monotone dose-response ``f_d`` per treatment, with ``f_d(0) = 0`` and ``f_d(1) = 1``.

    ``forward(doses)`` maps the ``(B, n_treatments)`` doses (0 where a treatment is absent) to the
    ``(B, n_treatments)`` scaled doses that weight the treatment embeddings. Each learned curve is
    ``f_d(d) = g_d(d) / g_d(reference_dose)`` with ``g_d(0) = 0`` and ``g_d`` increasing: dividing by
    its value at the reference dose only reparametrises ``f_d · e_d``, so the embedding ``e_d`` is the
    effect of the reference dose. This matters for training: CPA's un-normalised sigmoid starts at
    ``f(1) = σ(log 2) − ½ ≈ 0.17``, so the treatment embeddings start small and learn slowly while the
    encoder puts the treatment into the basal state (on Kang, R² over the top-50 DEGs of a held-out
    cell type −2.6 against −0.4 with the effect at full scale).

    Kinds:
        ``"sigmoid"``: CPA's generalised log-sigmoid ``g_d(d) = σ(β_d log1p(d) + b_d) − σ(b_d)`` with
            ``β_d = softplus(·) > 0`` (CPA leaves β unconstrained; the constraint makes it monotone).
        ``"mlp"``: a one-hidden-layer MLP per treatment, ``g_d(d) = h_d(d) − h_d(0)`` with
            ``h_d(d) = Σ_j softplus(v_dj) tanh(softplus(w_dj) d + c_dj)``: non-negative weights and a
            monotone activation make it monotone (CPA's MLP doser is unconstrained and gated by
            ``1[d > 0]``).
        ``"linear"``: ``f_d(d) = d / reference_dose`` (no parameters).
    """

    def __init__(self, n_treatments: int, kind: str = "sigmoid", n_hidden: int = 16, reference_dose: float = 1.0):
        super().__init__()
        check_choice("dose_response", kind, DOSE_RESPONSES, owner="decoder 'additive_embedding'")
        if not (isinstance(reference_dose, (int, float)) and reference_dose > 0 and math.isfinite(reference_dose)):
            raise ConfigError(f"decoder 'additive_embedding': reference_dose={reference_dose!r} must be a positive "
                              "number.")
        self.kind, self.reference_dose = kind, float(reference_dose)
        if kind == "sigmoid":
            self.beta = nn.Parameter(torch.full((n_treatments,), 0.5413))  # softplus(0.5413) = 1
            self.bias = nn.Parameter(torch.zeros(n_treatments))
        elif kind == "mlp":
            self.w = nn.Parameter(torch.randn(n_treatments, n_hidden) * 0.5)
            self.c = nn.Parameter(torch.randn(n_treatments, n_hidden) * 0.5)
            self.v = nn.Parameter(torch.randn(n_treatments, n_hidden) * 0.5 - 1.0)

    def _curve(self, doses: Tensor, treatments: Tensor | None = None) -> Tensor:
        """The un-normalised ``g_d`` at ``doses``: last dimension the treatments, or entries of ``treatments``."""
        def pick(parameter: Tensor) -> Tensor:  # the curves of the entries' treatments, or all of them
            return parameter if treatments is None else parameter.index_select(0, treatments)

        if self.kind == "sigmoid":
            beta, bias = F.softplus(pick(self.beta)), pick(self.bias)
            return torch.sigmoid(beta * torch.log1p(doses) + bias) - torch.sigmoid(bias)
        w, v, c = F.softplus(pick(self.w)), F.softplus(pick(self.v)), pick(self.c)  # (treatments, n_hidden)
        at_dose = torch.tanh(doses.unsqueeze(-1) * w + c)
        return ((at_dose - torch.tanh(c)) * v).sum(-1)

    def forward(self, doses: Tensor, treatments: Tensor | None = None) -> Tensor:
        """Each treatment's dose-response ``f_d(dose_d)``, normalised to 1 at the reference dose.

        ``doses`` is ``(B, n_treatments)``, or with ``treatments`` the 1-D doses of entries whose
        treatments ``treatments`` gives (see :func:`~fcrkit.data.labels.treatment_entries`).
        """
        if self.kind == "linear":
            return doses / self.reference_dose
        reference = self._curve(doses.new_full(doses.shape[-1:], self.reference_dose), treatments)  # > 0
        return self._curve(doses, treatments) / reference.clamp_min(1e-6)


class AdditiveEmbeddingDecoder(nn.Module):
    """CPA's decoder: ``MLP(z_basal + Σ_d f_d(dose_d) e_d + Σ_k E_k[x_k])``, one linear head per parameter.

    Args:
        n_input: latent dimension (the basal block; also the width of the embeddings).
        n_output: number of genes.
        heads: the raw parameters the likelihood needs.
        label_dims: ``t`` (treatment doses) and/or ``x`` (one-hot covariates), from the spec's
            ``conditions``; each one present gets its embedding.
        dose_response: ``"sigmoid"`` (CPA's log-sigmoid, default), ``"mlp"`` or ``"linear"``; see
            :class:`DoseResponse`.
        dose_hidden: hidden width of the ``"mlp"`` dose-response.
        reference_dose: the dose whose effect is the treatment's embedding (``f_d(reference_dose) = 1``).
        n_hidden: the MLP, as for the ``mlp`` decoder.
        n_layers: the MLP, as for the ``mlp`` decoder.
        norm: the MLP, as for the ``mlp`` decoder.
        dropout: the MLP, as for the ``mlp`` decoder.
        activation: the MLP, as for the ``mlp`` decoder.
        treatment_features: the treatments' feature matrix (passed by the generic model when the data were
            set up with ``treatment_features``): each treatment's embedding ``e_d`` is then a linear map of
            its encoded features (:mod:`fcrkit.components.treatments`) rather than a free vector, so an
            unseen treatment has one.
        treatment_encoder: the encoder of the features (a name or ``{name = ..., <options>}``; ``"none"``:
            free embeddings even with features).
    """

    def __init__(
        self,
        n_input: int,
        n_output: int,
        heads: Sequence[str],
        label_dims: LabelDims,
        *,
        dose_response: str = "sigmoid",
        dose_hidden: int = 16,
        reference_dose: float = 1.0,
        n_hidden: int = 128,
        n_layers: int = 1,
        norm: str = "batch",
        dropout: float = 0.0,
        activation: str = "relu",
        treatment_features: Tensor | None = None,
        treatment_encoder: str | Mapping[str, object] | None = "features",
    ):
        super().__init__()
        self.mlp = MLPDecoder(n_input, n_output, heads, {}, n_hidden=n_hidden, n_layers=n_layers, norm=norm,
                              dropout=dropout, activation=activation)
        self.treatment_embedding = self.dose_response = self.covariate_embedding = self.treatment_encoder = None
        if "t" in label_dims:
            self.dose_response = DoseResponse(label_dims["t"], dose_response, dose_hidden, reference_dose)
            self.treatment_encoder = build_treatment_encoder(treatment_encoder, treatment_features,
                                                             "decoder 'additive_embedding'")
            if self.treatment_encoder is None:
                self.treatment_embedding = nn.Parameter(torch.randn(label_dims["t"], n_input))
            else:  # e_d = A h(F_d): the embeddings are a function of the features
                self.feature_map = nn.Linear(self.treatment_encoder.width, n_input)
        if "x" in label_dims:
            self.covariate_embedding = nn.Parameter(torch.randn(label_dims["x"], n_input))

    def embeddings(self) -> Tensor:
        """The treatments' embeddings ``e_d``, ``(n_treatments, n_input)``: free, or from their features."""
        if self.treatment_embedding is not None:
            return self.treatment_embedding
        return self.feature_map(self.treatment_encoder.table())

    def shift(self, labels: Labels, n_cells: int) -> Tensor | float:
        """The embeddings added to the basal latent of ``n_cells`` cells: ``Σ_d f_d(dose_d) e_d + Σ_k E_k[x_k]``.

        The treatment term is summed over the cells' treatment entries only (``f_d(0) = 0``): no
        ``(cells, treatments)`` tensor.
        """
        shift: Tensor | float = 0.0
        if self.dose_response is not None:
            cells, treatments, doses = treatment_entries(labels)
            terms = self.dose_response(doses, treatments).unsqueeze(-1) * self.embeddings()[treatments]
            shift = terms.new_zeros(n_cells, terms.shape[-1]).index_add(0, cells, terms)
        if self.covariate_embedding is not None:
            shift = shift + labels["x"] @ self.covariate_embedding
        return shift

    def forward(self, z: Tensor, labels: Labels) -> dict[str, Tensor]:
        """Decode ``z`` plus the treatment and covariate embeddings of ``labels``."""
        return self.mlp(z + self.shift(labels, z.shape[0]), {})


class AdversarialClassifier(nn.Module):
    """CPA's adversaries: classifiers of t and x from latent blocks, which the encoder learns to fool.

    One classifier per label reads the chosen blocks. It trains on detached latents with its own
    optimiser on ``CE + penalty · mean_cells ||∇_z Σ logits||²``; the model's term is ``−Σ CE`` (weight
    it, and warm it up, with the spec entry's ``weight`` and ``warmup_epochs``).

    Cross-entropy (``loss="ce"``): a softmax over the classes of the label, against the cell's
    classes spread evenly: for ``t`` the classes are control and each treatment (a combination
    ``A+B`` counts half for each part); for ``x`` the covariate levels (with several covariate columns,
    each column's level counts ``1 / n_columns``). With one treatment per cell and one covariate column
    this is the ordinary multi-class cross-entropy. ``loss="bce"``: binary cross-entropy per entry of
    the multi-hot label, summed over entries.

    Args:
        blocks: the blocks the classifiers read (concatenated), default ``("basal",)``.
        labels: the labels to classify (default: every label of the data, ``t`` and ``x``).
        loss: ``"ce"`` or ``"bce"``.
        fool: the model's term: ``"neg_ce"``, CPA's ``−Σ CE`` (unbounded below: the encoder is also
            rewarded for making the classifiers confidently wrong), or ``"marginal"``, the classifiers'
            ``Σ CE`` against the minibatch's label frequencies (minimal when they learn nothing).
        penalty: weight of the gradient penalty in the adversaries' loss (CPA's ``penalty_adversary``).
        use: the classifiers read posterior means (``"loc"``, what ``predict`` uses) or samples (``"z"``).
        standardize: the classifiers read the latents standardised per dimension over the minibatch
            (batch mean and standard deviation; the model's gradient passes through them). Without it
            the encoder escapes the classifiers by shrinking the basal state: on Kang its scale fell to
            about 0.05 per dimension, where the classifiers (and their gradient penalty) could not
            follow, while a fresh logistic regression still told CTRL from STIM 98% of the time.
        n_hidden: width of each classifier's MLP (ReLU, no normalisation).
        n_layers: hidden layers of each classifier's MLP.
        adversary_lr: the classifiers' Adam learning rate.
        adversary_steps: their steps per model step.
        alternate_every: if > 0, the adversaries train only in every k-th epoch and the model does not
            step then (the trainer's epoch-level alternation; CPA alternates per batch instead).
    """

    def __init__(self, info: ModelInfo, *, blocks: Sequence[str] = ("basal",), labels: Sequence[str] | None = None,
                 loss: str = "ce", fool: str = "neg_ce", penalty: float = 3.0, use: str = "loc",
                 standardize: bool = True,
                 n_hidden: int = 64, n_layers: int = 2,
                 adversary_lr: float = 3e-3, adversary_steps: int = 3, alternate_every: int = 0):
        super().__init__()
        who = "adversarial_classifier"
        self.blocks = _check_blocks(info, blocks, who)
        labels = tuple(info.label_dims) if labels is None else ((labels,) if isinstance(labels, str) else tuple(labels))
        if not labels:
            raise ConfigError(f"regularizer {who!r}: there is no label to classify (set the data up with a "
                              "treatment_key and/or covariate_keys).")
        for label in labels:
            _check_label(info, label, who)
        check_choice("loss", loss, ("ce", "bce"), owner=f"regularizer {who!r}")
        check_choice("use", use, ("loc", "z"), owner=f"regularizer {who!r}")
        check_choice("fool", fool, ("neg_ce", "marginal"), owner=f"regularizer {who!r}")
        self.fool = fool
        if not (isinstance(penalty, (int, float)) and penalty >= 0):
            raise ConfigError(f"regularizer {who!r}: penalty={penalty!r} must be a number >= 0.")
        self.labels, self.loss_kind, self.use, self.penalty = labels, loss, use, float(penalty)
        self.standardize = bool(standardize)
        n_in = sum(info.block_dims[b] for b in self.blocks)

        def classifier(n_classes: int) -> nn.Sequential:
            return nn.Sequential(mlp(n_in, n_hidden, n_layers, norm="none"),
                                 nn.Linear(mlp_width(n_in, n_hidden, n_layers), n_classes))

        extra = {"t": 1 if loss == "ce" else 0, "x": 0}  # the control class
        self.adversary = nn.ModuleDict({label: classifier(info.label_dims[label] + extra[label])
                                        for label in labels})
        if not (isinstance(adversary_lr, (int, float)) and adversary_lr > 0):
            raise ConfigError(f"regularizer {who!r}: adversary_lr={adversary_lr!r} must be a positive number.")
        if isinstance(adversary_steps, bool) or not isinstance(adversary_steps, int) or adversary_steps < 1:
            raise ConfigError(f"regularizer {who!r}: adversary_steps={adversary_steps!r} must be an integer >= 1.")
        self.adversary_lr, self.adversary_steps = float(adversary_lr), int(adversary_steps)
        self.alternate_every = int(alternate_every)

    def _latents(self, ctx: Context) -> Tensor:
        latents = getattr(ctx, self.use)
        z = torch.cat([latents[b] for b in self.blocks], dim=-1)
        if self.standardize and z.shape[0] > 1:
            z = (z - z.mean(0)) * torch.rsqrt(z.var(0, unbiased=False) + 1e-8)
        return z

    def _target(self, label: str, values: Tensor) -> Tensor:
        """What a classifier of ``label`` is trained towards: class probabilities (ce) or the multi-hot (bce)."""
        hot = (values > 0).to(torch.float32)
        if self.loss_kind == "bce":
            return hot
        if label == "t":
            hot = torch.cat([(hot.sum(-1, keepdim=True) == 0).to(hot.dtype), hot], dim=-1)
        return hot / hot.sum(-1, keepdim=True).clamp_min(1.0)

    def _cross_entropy(self, logits: Tensor, target: Tensor) -> Tensor:
        if self.loss_kind == "bce":
            return F.binary_cross_entropy_with_logits(logits, target, reduction="none").sum(-1).mean()
        return -(target * F.log_softmax(logits, dim=-1)).sum(-1).mean()

    def cross_entropy(self, ctx: Context) -> dict[str, Tensor]:
        """Each classifier's cross-entropy on the batch (gradients reach the latents)."""
        z = self._latents(ctx)
        return {label: self._cross_entropy(self.adversary[label](z), self._target(label, ctx.labels[label]))
                for label in self.labels}

    def loss(self, ctx: Context) -> Tensor:
        """The model's term: ``−Σ CE`` (``fool="neg_ce"``) or ``Σ CE`` against the batch's label frequencies."""
        if self.fool == "neg_ce":
            return -sum(self.cross_entropy(ctx).values())
        z = self._latents(ctx)
        total = z.new_zeros(())
        for label in self.labels:
            target = self._target(label, ctx.labels[label])
            total = total + self._cross_entropy(self.adversary[label](z), target.mean(0).expand_as(target))
        return total

    def adversary_loss(self, ctx: Context) -> Tensor:
        """``Σ_labels CE + penalty · mean_cells ||∇_z Σ logits||²`` on the (detached) latents of ``ctx``."""
        z = self._latents(ctx).detach().requires_grad_(True)  # the penalty is on the classifiers' input
        total = z.new_zeros(())
        for label in self.labels:
            logits = self.adversary[label](z)
            total = total + self._cross_entropy(logits, self._target(label, ctx.labels[label]))
            if self.penalty > 0:
                (grad,) = torch.autograd.grad(logits.sum(), z, create_graph=True)
                total = total + self.penalty * grad.pow(2).sum(-1).mean()
        return total


@hookimpl
def fcrkit_register_components(registry) -> None:
    """Register the ``additive_embedding`` decoder and the ``adversarial_classifier`` regulariser."""
    registry.decoder("additive_embedding", AdditiveEmbeddingDecoder)
    registry.regularizer("adversarial_classifier", AdversarialClassifier)
