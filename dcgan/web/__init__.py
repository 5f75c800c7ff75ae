"""The generator in the browser: `dcgan web build` assembles a static page on onnxruntime-web (build.py), with
latent directions computed once (directions.py) and the runtime pinned (runtime.py); `dcgan web serve` serves it
(serve.py). The page itself is plain ES modules in page/."""
