"""The rest of Meta's Graph API through the gate, for drop-in WhatsApp clients: media, the number's fields,
template management, each with the number's token. Sends are gated by message/ (`/messages`); nothing
here sends."""
