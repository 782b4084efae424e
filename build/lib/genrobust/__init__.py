"""genrobust: are generative classifiers more robust to adversarial attacks?

The seven latent-variable classifiers of Li, Bradshaw & Sharma (ICML 2019), trained with an ELBO and an
amortised q(z|x,y), classifying through importance-sampled logits log p(x, y).
"""

from genrobust.errors import GenrobustError
from genrobust.models import STRUCTURES, LatentClassifier, ModelConfig

__version__ = "0.1.0"
__all__ = ["GenrobustError", "LatentClassifier", "ModelConfig", "STRUCTURES", "__version__"]
