{#- netlog firewall logging, inside sys-firewall itself (its /rw is its own):
    sudo qubesctl --skip-dom0 --targets=sys-firewall state.sls qubes.monitor.netlog-firewall
    Installed as /rw/config/qubes-firewall.d/50-netlog, which qubes-firewall
    runs at the same moment as /rw/config/qubes-firewall-user-script, so a
    user's own script is left alone. -#}
{%- from "qubes/monitor/map.jinja" import sysmon with context %}

netlog-firewall-rules:
  file.managed:
    - name: {{ sysmon.root }}/rw/config/qubes-firewall.d/50-netlog
    - source: salt://qubes/monitor/files/qubes-firewall-user-script
    - mode: '0755'
    - makedirs: true
