"""The gateway process: session core, SSH and browser doors, CLI and composition root."""

import warnings

from cryptography.utils import CryptographyDeprecationWarning

# asyncssh names DSA key types when it is imported, and cryptography 51 warns about each
# use of the name: noise on every `sallyport` command. DSA keys stay refused
# (policy.sshkeys); only this one warning, from asyncssh's import, is silenced.
warnings.filterwarnings(
    "ignore", message="DSA is deprecated", category=CryptographyDeprecationWarning
)
