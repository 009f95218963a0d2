{#- In every template whose qubes sys-monitor polls:
    sudo qubesctl --skip-dom0 --targets=debian-13-xfce,fedora-43-xfce state.sls qubes.monitor.template-handler
    (the list is `handler_templates` in map.jinja; qubes.monitor.top does all). -#}
{%- from "qubes/monitor/map.jinja" import sysmon with context %}

sysmon-handler:
  file.managed:
    - name: {{ sysmon.root }}/etc/qubes-rpc/qubes.Metrics.Get
    - source: salt://qubes/monitor/files/qubes.Metrics.Get
    - mode: '0755'
    - makedirs: true
