"""The avatar's media over WebRTC: reply audio on the media clock and clock-paced tracks."""
