"""The labelling side of a human-oracle active-learning run: the session (the round waiting for labels,
its answers journalled as they come, the next round trained in the background), the page that serves it
(``retinalab label``: FastAPI and ``page.html``) and the Label Studio files. The loop, its state and the
oracles it asks are in :mod:`retinalab.active`."""
