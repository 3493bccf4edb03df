"""``momedo bridge``: a bot account's end-to-end client with a local HTTP API and webhooks.

The bridge runs next to the municipal software (docs/INTEGRATIONS.md). One trio process:

* :mod:`.service` keeps the bot's device connected (reconnect with jittered back-off),
  decrypts what arrives (text, RICH_TEXT with reply_to and metadata, attachments), writes each
  message to the :mod:`.inbox` (SQLite, fsynced) *before* the delivery is acked, and sends
  what the API is given;
* :mod:`.api` is the HTTP API (Starlette, served by hypercorn's trio worker), described in
  ``docs/bridge-openapi.yaml``;
* :mod:`.webhook` POSTs every inbox message, in order, signed, to the configured URL and
  advances its on-disk pointer only after a 2xx.
"""
